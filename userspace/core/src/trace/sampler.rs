//! Head sampling per the OpenTelemetry `OTEL_TRACES_SAMPLER` values: `always_on`,
//! `always_off`, `traceidratio`, and their `parentbased_*` forms (the default is
//! `parentbased_always_on`). A span not sampled is not built or exported, and neither are its
//! children in sonde (the decision travels with the span context, also across processes on
//! the node).
use super::context::TraceId;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RootRule {
    AlwaysOn,
    AlwaysOff,
    /// Fraction in [0, 1].
    Ratio(f64),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampler {
    pub root: RootRule,
    /// Follow the parent's decision when there is a parent.
    pub parent_based: bool,
}

impl Default for Sampler {
    fn default() -> Self {
        Self {
            root: RootRule::AlwaysOn,
            parent_based: true,
        }
    }
}

impl Sampler {
    /// From the values of `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`.
    pub fn parse(name: Option<&str>, arg: Option<&str>) -> Result<Self, String> {
        let ratio = || -> Result<f64, String> {
            match arg.map(str::trim).filter(|a| !a.is_empty()) {
                None => Ok(1.0),
                Some(a) => match a.parse::<f64>() {
                    Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                    _ => Err(format!(
                        "sampler argument {a:?} is not a probability between 0 and 1"
                    )),
                },
            }
        };
        let (root, parent_based) = match name.map(str::trim).unwrap_or("parentbased_always_on") {
            "" | "parentbased_always_on" => (RootRule::AlwaysOn, true),
            "always_on" => (RootRule::AlwaysOn, false),
            "always_off" => (RootRule::AlwaysOff, false),
            "parentbased_always_off" => (RootRule::AlwaysOff, true),
            "traceidratio" => (RootRule::Ratio(ratio()?), false),
            "parentbased_traceidratio" => (RootRule::Ratio(ratio()?), true),
            other => {
                return Err(format!(
                    "unknown sampler {other:?} (always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off, parentbased_traceidratio)"
                ));
            }
        };
        Ok(Self { root, parent_based })
    }

    /// The decision for a span of `trace`, given its parent's decision if it has a parent.
    pub fn sample(&self, trace: &TraceId, parent_sampled: Option<bool>) -> bool {
        if let (true, Some(parent)) = (self.parent_based, parent_sampled) {
            return parent;
        }
        match self.root {
            RootRule::AlwaysOn => true,
            RootRule::AlwaysOff => false,
            RootRule::Ratio(r) => {
                // As the OpenTelemetry SDKs do: the trace id's low 8 bytes against the ratio,
                // so every sonde (and SDK) decides the same for the same trace.
                let mut low = [0u8; 8];
                low.copy_from_slice(&trace.0[8..16]);
                let bound = (r * (1u64 << 63) as f64) as u64;
                (u64::from_be_bytes(low) >> 1) < bound
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_standard_values_and_rejects_others() {
        assert_eq!(Sampler::parse(None, None).unwrap(), Sampler::default());
        assert_eq!(
            Sampler::parse(Some("always_off"), None).unwrap().root,
            RootRule::AlwaysOff
        );
        assert_eq!(
            Sampler::parse(Some("parentbased_traceidratio"), Some("0.25")).unwrap(),
            Sampler {
                root: RootRule::Ratio(0.25),
                parent_based: true
            }
        );
        assert!(Sampler::parse(Some("traceidratio"), Some("2")).is_err());
        assert!(Sampler::parse(Some("sometimes"), None).is_err());
    }

    #[test]
    fn ratio_samples_about_that_fraction_and_parents_win() {
        let s = Sampler::parse(Some("parentbased_traceidratio"), Some("0.25")).unwrap();
        let mut ids = super::super::context::IdGenerator::default();
        let sampled = (0..20_000)
            .filter(|_| s.sample(&ids.trace_id(), None))
            .count();
        assert!((4_000..6_000).contains(&sampled), "{sampled}");
        let t = ids.trace_id();
        assert!(s.sample(&t, Some(true)));
        assert!(!s.sample(&t, Some(false)));
        let off = Sampler::parse(Some("always_off"), None).unwrap();
        assert!(
            !off.sample(&t, Some(true)),
            "not parent-based: its own rule"
        );
    }
}
