//! The methods an evaluation compares, all on the same embeddings with the same SRM and loop
//! options: the bundle's policy, and two baselines that only change who picks the patch.

use crate::agent::{Agent, CentreChooser, PatchChooser, PolicyChooser, RandomChooser};

/// Who picks the patch at each step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    /// The bundle's policy, greedy (the patch with the largest logit).
    Policy,
    /// Uniformly random patches, labelled by the SRM: the paper's "w/o RL" ablation.
    Random,
    /// Always the centre patch of the grid: what a person clicking "the middle" would do.
    Centre,
}

impl Method {
    /// Every method, in report order (the policy first, then the baselines).
    pub const ALL: [Method; 3] = [Method::Policy, Method::Random, Method::Centre];

    /// The short name used in tables and the CSV.
    pub fn name(self) -> &'static str {
        match self {
            Method::Policy => "policy",
            Method::Random => "random",
            Method::Centre => "centre",
        }
    }

    /// One line on what the method is, for the report.
    pub fn describe(self) -> &'static str {
        match self {
            Method::Policy => "the bundle's policy, greedy",
            Method::Random => "uniformly random patches, SRM labels (the paper's \"w/o RL\")",
            Method::Centre => "the grid's centre patch every step, SRM labels",
        }
    }

    /// The chooser for one image. `seed` only matters for [`Method::Random`]; see [`image_seed`].
    ///
    /// Panics for [`Method::Policy`] when the agent has no policy ([`Agent::load`] requires one).
    pub fn chooser(self, agent: &Agent, seed: u64) -> Box<dyn PatchChooser + '_> {
        match self {
            Method::Policy => Box::new(PolicyChooser(
                agent
                    .policy
                    .as_ref()
                    .expect("Agent::load requires a policy"),
            )),
            Method::Random => Box::new(RandomChooser::new(agent.grid.len(), seed)),
            Method::Centre => Box::new(CentreChooser(agent.grid)),
        }
    }
}

/// The random baseline's seed for one image: the run's seed mixed with the image id, so that an
/// image gets the same patches whatever `--images` and the order of the split, and runs repeat.
pub fn image_seed(seed: u64, id: &str) -> u64 {
    // FNV-1a over the id, then splitmix64's finaliser to spread nearby seeds apart.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    let mut z = h ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_depend_on_run_seed_and_id_only() {
        assert_eq!(image_seed(0, "a"), image_seed(0, "a"));
        assert_ne!(image_seed(0, "a"), image_seed(1, "a"));
        assert_ne!(image_seed(0, "a"), image_seed(0, "b"));
        let names: Vec<_> = Method::ALL.iter().map(|m| m.name()).collect();
        assert_eq!(names, ["policy", "random", "centre"]);
    }
}
