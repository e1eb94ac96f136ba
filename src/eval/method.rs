//! The methods an evaluation compares, all on the same embeddings: the bundle's policy, three
//! baselines that only change who picks the patch (labels from the same SRM), and the oracle,
//! which clicks from the ground truth (the upper bound of any clicking agent on this decoder).

use std::fmt;
use std::str::FromStr;

use crate::agent::{
    Agent, CentreChooser, PatchChooser, PolicyChooser, RandomChooser, SampledPolicyChooser,
    SrmChooser,
};
use crate::sam::FrameGeometry;

/// Who picks the points.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Method {
    /// The bundle's policy, greedy (the patch with the largest logit).
    Policy,
    /// The bundle's policy, sampled from the softmax of its logits (seeded per image).
    PolicySample,
    /// Uniformly random patches, labelled by the SRM: the paper's "w/o RL" ablation.
    Random,
    /// Always the centre patch of the grid: what a person clicking "the middle" would do.
    Centre,
    /// The SRM's most confident free patch on the current state: the SRM without a policy.
    SrmOnly,
    /// Clicks from the ground truth by SAM's protocol, as many as the loop's points.
    Oracle,
}

impl Method {
    /// Every method, in report order (the policy first, then the baselines, the oracle last).
    pub const ALL: [Method; 6] = [
        Method::Policy,
        Method::PolicySample,
        Method::Random,
        Method::Centre,
        Method::SrmOnly,
        Method::Oracle,
    ];

    /// The short name used in tables, the CSV and `--methods`.
    pub fn name(self) -> &'static str {
        match self {
            Method::Policy => "policy",
            Method::PolicySample => "policy-sample",
            Method::Random => "random",
            Method::Centre => "centre",
            Method::SrmOnly => "srm-only",
            Method::Oracle => "oracle",
        }
    }

    /// One line on what the method is, for the report.
    pub fn describe(self) -> &'static str {
        match self {
            Method::Policy => "the bundle's policy, greedy",
            Method::PolicySample => {
                "the bundle's policy, each patch sampled from the softmax of its logits (as in training)"
            }
            Method::Random => "uniformly random patches, SRM labels (the paper's \"w/o RL\")",
            Method::Centre => "the grid's centre patch every step, SRM labels",
            Method::SrmOnly => {
                "no policy: the patch whose centre the SRM finds most likely on the object (on the current state), among those not clicked yet; SRM labels"
            }
            Method::Oracle => {
                "clicks from the ground truth (SAM's protocol: the deepest point of the largest error region, labelled by its kind), as many as the loop's points (2 + steps): the upper bound of any clicking agent on this decoder"
            }
        }
    }

    /// Whether the bundle's policy picks the patches (greedy or sampled).
    pub fn is_policy(self) -> bool {
        matches!(self, Method::Policy | Method::PolicySample)
    }

    /// Whether the method runs the prompting loop (with a patch chooser and the SRM's labels).
    pub fn is_loop(self) -> bool {
        self != Method::Oracle
    }

    /// The chooser for one image of a loop method (`None` for the oracle). `seed` only matters
    /// for [`Method::Random`] and [`Method::PolicySample`]; see [`image_seed`].
    pub fn chooser<'a>(
        self,
        agent: &'a Agent,
        geometry: &FrameGeometry,
        seed: u64,
    ) -> Option<Box<dyn PatchChooser + 'a>> {
        Some(match self {
            Method::Policy => Box::new(PolicyChooser(&agent.policy)),
            Method::PolicySample => Box::new(SampledPolicyChooser::new(&agent.policy, seed)),
            Method::Random => Box::new(RandomChooser::new(agent.grid.len(), seed)),
            Method::Centre => Box::new(CentreChooser(agent.grid)),
            Method::SrmOnly => Box::new(SrmChooser::new(&agent.srm, agent.grid, *geometry)),
            Method::Oracle => return None,
        })
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Method {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Method::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Method::ALL.iter().map(|m| m.name()).collect();
                format!("unknown method '{s}' (known: {})", names.join(", "))
            })
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
    }

    #[test]
    fn names_round_trip() {
        let names: Vec<_> = Method::ALL.iter().map(|m| m.name()).collect();
        assert_eq!(
            names,
            [
                "policy",
                "policy-sample",
                "random",
                "centre",
                "srm-only",
                "oracle"
            ]
        );
        for m in Method::ALL {
            assert_eq!(m.name().parse::<Method>().unwrap(), m);
        }
        let e = "greedy".parse::<Method>().unwrap_err();
        assert!(
            e.contains("unknown method 'greedy'") && e.contains("srm-only"),
            "{e}"
        );
    }
}
