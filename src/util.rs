//! Small helpers that several modules share: durations as milliseconds, a panic's message,
//! sorting floats. Nothing of the crate below it (every module may use it).

use std::any::Any;
use std::time::Duration;

/// A duration in milliseconds, as every report of this crate gives times.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The message a panic carried (`panic!("...")` gives a `&str` or a `String`), for reports of a
/// thread that died.
pub fn panic_message(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".into())
}

/// Sorts floats in ascending order, NaN last (IEEE 754 total order: no panic on NaN).
pub fn sort_floats<T: TotalOrder>(values: &mut [T]) {
    values.sort_by(|a, b| a.total_order(b));
}

/// `f32::total_cmp` and `f64::total_cmp` behind one name, for [`sort_floats`].
pub trait TotalOrder {
    /// The IEEE 754 total order.
    fn total_order(&self, other: &Self) -> std::cmp::Ordering;
}

impl TotalOrder for f32 {
    fn total_order(&self, other: &Self) -> std::cmp::Ordering {
        self.total_cmp(other)
    }
}

impl TotalOrder for f64 {
    fn total_order(&self, other: &Self) -> std::cmp::Ordering {
        self.total_cmp(other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers() {
        assert_eq!(ms(Duration::from_micros(1500)), 1.5);
        let p = std::panic::catch_unwind(|| panic!("boom {}", 1)).unwrap_err();
        assert_eq!(panic_message(p.as_ref()), "boom 1");
        let p = std::panic::catch_unwind(|| panic!("static")).unwrap_err();
        assert_eq!(panic_message(p.as_ref()), "static");
        let mut v = vec![3.0, f64::NAN, -1.0, 2.0];
        sort_floats(&mut v);
        assert_eq!(&v[..3], &[-1.0, 2.0, 3.0]);
        assert!(v[3].is_nan());
    }
}
