//! The methods an evaluation compares, all on the same embeddings and from the same SRM start
//! points: the bundle's agents (the paper's policy, the learned clicker), baselines that only
//! change who picks the patch (labels from the same SRM), a rule, the in-loop teacher, and the
//! oracle, which clicks from the ground truth from scratch (the upper bound of any clicking agent
//! on this decoder).

use std::fmt;
use std::str::FromStr;

use anyhow::{Result, bail};

use super::oracle::next_click;
use crate::agent::{
    Agent, Choice, Click, ClickerChooser, FixedPatchChooser, PatchChooser, PolicyChooser,
    RandomChooser, SampledPolicyChooser, SrmChooser, SrmErrorChooser, StepView,
};
use crate::dataset::Mask;
use crate::sam::postprocess;

/// Who picks the points.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Method {
    /// The learned clicker (patch, label and stop), trained by imitation of the oracle.
    Clicker,
    /// The learned clicker with its stop action ignored: it clicks to the step limit.
    ClickerNoStop,
    /// The bundle's policy, greedy (the patch with the largest logit).
    Policy,
    /// The bundle's policy, sampled from the softmax of its logits (seeded per image).
    PolicySample,
    /// Uniformly random patches, labelled by the SRM: the paper's "w/o RL" ablation.
    Random,
    /// Always the centre patch of the grid: what a person clicking "the middle" would do.
    Centre,
    /// Always the bundle's `best_patch`, the patch most often on the object in training.
    BestPatch,
    /// The SRM's most confident free patch on the current state: the SRM without a policy.
    SrmOnly,
    /// The rule: where the SRM's map on E and the current mask disagree most, labelled by which
    /// way they disagree.
    SrmError,
    /// The oracle's next click inside the loop (from the same start points as every method).
    Teacher,
    /// Clicks from the ground truth by SAM's protocol, from scratch, as many as the loop's points.
    Oracle,
}

impl Method {
    /// Every method, in report order (the learned agents first, then the baselines, the ground
    /// truth's last).
    pub const ALL: [Method; 11] = [
        Method::Clicker,
        Method::ClickerNoStop,
        Method::Policy,
        Method::PolicySample,
        Method::Random,
        Method::Centre,
        Method::BestPatch,
        Method::SrmOnly,
        Method::SrmError,
        Method::Teacher,
        Method::Oracle,
    ];

    /// The short name used in tables, the CSV and `--methods`.
    pub fn name(self) -> &'static str {
        match self {
            Method::Clicker => "clicker",
            Method::ClickerNoStop => "clicker-no-stop",
            Method::Policy => "policy",
            Method::PolicySample => "policy-sample",
            Method::Random => "random",
            Method::Centre => "centre",
            Method::BestPatch => "best-patch",
            Method::SrmOnly => "srm-only",
            Method::SrmError => "srm-error",
            Method::Teacher => "teacher",
            Method::Oracle => "oracle",
        }
    }

    /// One line on what the method is, for the report.
    pub fn describe(self) -> &'static str {
        match self {
            Method::Clicker => {
                "the learned clicker: patch, label and stop from one network trained by imitation of the oracle (DAgger)"
            }
            Method::ClickerNoStop => "the learned clicker with its stop action ignored",
            Method::Policy => "the bundle's policy (the paper's agent), greedy, SRM labels",
            Method::PolicySample => {
                "the bundle's policy, each patch sampled from the softmax of its logits (as in training), SRM labels"
            }
            Method::Random => "uniformly random patches, SRM labels (the paper's \"w/o RL\")",
            Method::Centre => "the grid's centre patch every step, SRM labels",
            Method::BestPatch => {
                "the bundle's best_patch (the patch most often on the object in training) every step, SRM labels"
            }
            Method::SrmOnly => {
                "no policy: the patch whose centre the SRM finds most likely on the object (on the current state), among those not clicked yet; SRM labels"
            }
            Method::SrmError => {
                "a rule, no learning: the patch where the SRM's map on E and the current mask disagree most, positive where the map says object and the mask has none, negative the other way"
            }
            Method::Teacher => {
                "the oracle's next click at each step of the loop (deepest point of the largest error region of the current mask, labelled from the ground truth), from the same start points: what the clicker imitates"
            }
            Method::Oracle => {
                "clicks from the ground truth from scratch (SAM's protocol: the deepest point of the largest error region, labelled by its kind), as many as the loop's points (2 + steps): the upper bound of any clicking agent on this decoder"
            }
        }
    }

    /// Whether a learned agent picks the clicks (the methods compared against the others).
    pub fn is_learned(self) -> bool {
        matches!(
            self,
            Method::Clicker | Method::ClickerNoStop | Method::Policy | Method::PolicySample
        )
    }

    /// Whether the method is the paper's policy, greedy or sampled.
    pub fn is_policy(self) -> bool {
        matches!(self, Method::Policy | Method::PolicySample)
    }

    /// Whether the method runs the prompting loop (the oracle clicks from scratch instead).
    pub fn is_loop(self) -> bool {
        self != Method::Oracle
    }

    /// Whether the method looks at the ground truth.
    pub fn uses_truth(self) -> bool {
        matches!(self, Method::Teacher | Method::Oracle)
    }

    /// The chooser for one image of a loop method (`None` for the oracle); an error when the
    /// bundle lacks what the method needs. `seed` only matters for [`Method::Random`] and
    /// [`Method::PolicySample`] (see [`image_seed`]); `truth` only for [`Method::Teacher`].
    pub fn chooser<'a>(
        self,
        agent: &'a Agent,
        seed: u64,
        truth: &'a Mask,
    ) -> Result<Option<Box<dyn PatchChooser + 'a>>> {
        Ok(Some(match self {
            Method::Clicker => Box::new(ClickerChooser::new(agent.clicker()?, true)),
            Method::ClickerNoStop => Box::new(ClickerChooser::new(agent.clicker()?, false)),
            Method::Policy => Box::new(PolicyChooser(agent.policy()?)),
            Method::PolicySample => Box::new(SampledPolicyChooser::new(agent.policy()?, seed)),
            Method::Random => Box::new(RandomChooser::new(seed)),
            Method::Centre => Box::new(FixedPatchChooser::centre(agent.grid)),
            Method::BestPatch => match agent.best_patch {
                Some(p) => Box::new(FixedPatchChooser(p)),
                None => bail!(
                    "the bundle has no [agent] best_patch (alignsam train writes it from its training split)"
                ),
            },
            Method::SrmOnly => Box::new(SrmChooser::new(&agent.srm)),
            Method::SrmError => Box::new(SrmErrorChooser::new(&agent.srm)),
            Method::Teacher => Box::new(TeacherChooser { truth }),
            Method::Oracle => return Ok(None),
        }))
    }
}

/// The oracle inside the loop: its next click for the current mask (at the image's size),
/// labelled from the ground truth, at its exact pixel. Repeats are its own business (the guard
/// does not apply: it is the upper bound, not an agent); an exact mask stops it.
pub struct TeacherChooser<'a> {
    /// The ground truth.
    pub truth: &'a Mask,
}

impl PatchChooser for TeacherChooser<'_> {
    fn choose(&mut self, view: &StepView) -> Result<Choice> {
        let pred = postprocess::threshold(&postprocess::upscale_logits(
            &view.current.logits,
            view.geometry,
        ));
        let Some(p) = next_click(&pred, self.truth) else {
            return Ok(Choice {
                decision: crate::agent::Decision::Stop,
                quality: None,
            });
        };
        let (h, w) = view.geometry.original;
        let click = Click {
            patch: view.grid.patch_at(p.x, p.y, h, w),
            at: Some((p.x, p.y)),
            label: Some(p.label),
        };
        Ok(Some(click).into())
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
                "clicker",
                "clicker-no-stop",
                "policy",
                "policy-sample",
                "random",
                "centre",
                "best-patch",
                "srm-only",
                "srm-error",
                "teacher",
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
