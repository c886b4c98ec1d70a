//! The few statistics the bench needs: percentiles of a latency sample, and the median and
//! spread of a figure across repetitions.

/// The `p`th percentile (0..=100) of `sorted` (ascending), by nearest rank: the smallest
/// value with at least `p`% of the sample at or below it. `None` for an empty sample.
pub fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let n = sorted.len();
    let rank = ((p / 100.0) * n as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, n) - 1])
}

/// The median of `values` (the mean of the two middle ones for an even count).
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

/// A figure over its repetitions: the median is what the bench reports, the rest says how
/// much the machine moved.
#[derive(Clone, Debug, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// Coefficient of variation: sample standard deviation / mean (0 for one repetition).
    pub cv: f64,
    pub reps: Vec<f64>,
}

impl Spread {
    pub fn of(reps: &[f64]) -> Option<Self> {
        let median = median(reps)?;
        let min = reps.iter().copied().fold(f64::INFINITY, f64::min);
        let max = reps.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Some(Self {
            median,
            min,
            max,
            cv: cv(reps),
            reps: reps.to_vec(),
        })
    }
}

/// Sample standard deviation over the mean; 0 when there are fewer than two values or the
/// mean is 0.
pub fn cv(values: &[f64]) -> f64 {
    let n = values.len();
    if n < 2 {
        return 0.0;
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    if mean == 0.0 {
        return 0.0;
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    var.sqrt() / mean.abs()
}

/// amesh / no mesh; `None` when the baseline is 0 (no ratio to give).
pub fn ratio(amesh: f64, no_mesh: f64) -> Option<f64> {
    (no_mesh != 0.0 && amesh.is_finite() && no_mesh.is_finite()).then(|| amesh / no_mesh)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 90.0), Some(90));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&v, 0.0), Some(1));
        let v = [10, 20, 30];
        assert_eq!(percentile(&v, 50.0), Some(20));
        assert_eq!(percentile(&v, 99.0), Some(30));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn one_slow_request_in_a_hundred_is_the_p99_not_the_p90() {
        let mut v = vec![100u64; 99];
        v.push(10_000);
        assert_eq!(percentile(&v, 90.0), Some(100));
        assert_eq!(percentile(&v, 99.0), Some(100));
        assert_eq!(percentile(&v, 99.5), Some(10_000));
    }

    #[test]
    fn medians_odd_and_even() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[5.0]), Some(5.0));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn spread_keeps_min_max_and_cv() {
        let s = Spread::of(&[10.0, 12.0, 11.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (11.0, 10.0, 12.0));
        // mean 11, sample sd 1 -> cv 1/11
        assert!((s.cv - 1.0 / 11.0).abs() < 1e-12);
        assert_eq!(s.reps, vec![10.0, 12.0, 11.0]);
        assert_eq!(Spread::of(&[4.0]).unwrap().cv, 0.0);
        assert_eq!(Spread::of(&[]), None);
    }

    #[test]
    fn ratios() {
        assert_eq!(ratio(5.0, 10.0), Some(0.5));
        assert_eq!(ratio(300.0, 100.0), Some(3.0));
        assert_eq!(ratio(1.0, 0.0), None);
        assert_eq!(ratio(f64::NAN, 1.0), None);
    }
}
