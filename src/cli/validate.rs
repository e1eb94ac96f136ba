//! Value parsers for every numeric option: a value outside its range, NaN or infinite is a usage
//! error that names the option and the allowed range, before anything runs.

use clap::builder::TypedValueParser;

/// An integer option in `min..=max`, as `usize`.
pub fn count(min: u64, max: u64) -> impl TypedValueParser<Value = usize> {
    clap::value_parser!(u64)
        .range(min..=max)
        .map(|v| usize::try_from(v).unwrap_or(usize::MAX))
}

/// An integer option in `min..=max`, as `u64`.
pub fn count64(min: u64, max: u64) -> impl TypedValueParser<Value = u64> {
    clap::value_parser!(u64).range(min..=max)
}

/// An integer option in `min..=max`, as `u32`.
pub fn count32(min: u32, max: u32) -> impl TypedValueParser<Value = u32> {
    clap::value_parser!(u32).range(i64::from(min)..=i64::from(max))
}

/// A real option: finite, in `[min, max]`, and above `min` when `open_min` (a rate or a time
/// that must be positive).
#[derive(Clone, Copy, Debug)]
pub struct Real {
    min: f64,
    max: f64,
    open_min: bool,
}

/// A finite real in `[min, max]`.
pub fn real(min: f64, max: f64) -> Real {
    Real {
        min,
        max,
        open_min: false,
    }
}

/// A finite real in `(min, max]`.
pub fn positive(min: f64, max: f64) -> Real {
    Real {
        min,
        max,
        open_min: true,
    }
}

impl Real {
    fn check(&self, s: &str) -> Result<f64, String> {
        let v: f64 = s
            .trim()
            .parse()
            .map_err(|_| format!("'{s}' is not a number"))?;
        let low_ok = if self.open_min {
            v > self.min
        } else {
            v >= self.min
        };
        if !v.is_finite() || !low_ok || v > self.max {
            let open = if self.open_min { '(' } else { '[' };
            return Err(format!(
                "{v} is not allowed: the value must be finite and in {open}{}, {}]",
                self.min, self.max
            ));
        }
        Ok(v)
    }

    /// As an `f32` option.
    pub fn f32(self) -> impl TypedValueParser<Value = f32> {
        move |s: &str| self.check(s).map(|v| v as f32)
    }

    /// As an `f64` option.
    pub fn f64(self) -> impl TypedValueParser<Value = f64> {
        move |s: &str| self.check(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reals_refuse_nan_infinity_and_out_of_range() {
        let r = positive(0.0, 1000.0);
        assert_eq!(r.check("2.5"), Ok(2.5));
        for bad in ["0", "-1", "NaN", "inf", "-inf", "1e9", "x"] {
            assert!(r.check(bad).is_err(), "{bad}");
        }
        let unit = real(0.0, 1.0);
        assert_eq!(unit.check("0"), Ok(0.0));
        assert!(unit.check("1.0001").is_err());
    }
}
