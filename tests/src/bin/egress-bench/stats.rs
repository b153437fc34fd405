//! Medians over rounds, and figures paired round by round against a baseline measured in
//! the same round (a machine that is slower for a while is slower for both).

pub fn median(values: &[f64]) -> f64 {
    quantile(values, 0.5)
}

/// The `q` quantile, interpolated between the nearest ranks.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let pos = q * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

/// Interquartile range: how much rounds of one configuration differ from each other.
pub fn iqr(values: &[f64]) -> f64 {
    quantile(values, 0.75) - quantile(values, 0.25)
}

/// Median over rounds of `x / base` (rounds paired by index).
pub fn paired_ratio(x: &[f64], base: &[f64]) -> f64 {
    let r: Vec<f64> = x.iter().zip(base).map(|(a, b)| a / b).collect();
    median(&r)
}

/// Median over rounds of `x - base`.
pub fn paired_diff(x: &[f64], base: &[f64]) -> f64 {
    let d: Vec<f64> = x.iter().zip(base).map(|(a, b)| a - b).collect();
    median(&d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_quantiles() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(iqr(&[1.0, 2.0, 3.0, 4.0, 5.0]), 2.0);
        assert_eq!(paired_ratio(&[2.0, 6.0, 3.0], &[1.0, 2.0, 3.0]), 2.0);
        assert_eq!(paired_diff(&[2.0, 6.0, 3.0], &[1.0, 2.0, 3.0]), 1.0);
    }
}
