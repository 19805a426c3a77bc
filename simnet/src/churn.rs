//! Session lengths for churn: how long a peer stays before it leaves.

use std::time::Duration;

use shoal_overlay::Rng;

/// The distribution of session lengths, fixed by its median.
///
/// Measurements of deployed peer-to-peer systems find heavy-tailed sessions
/// (Weibull with shape below 1, or Pareto); exponential is the memoryless
/// baseline.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SessionDist {
    /// Exponential.
    Exponential,
    /// Weibull with shape 0.5 (heavy tail).
    Weibull,
    /// Pareto with shape 2 (heavy tail, finite mean).
    Pareto,
}

const WEIBULL_SHAPE: f64 = 0.5;
const PARETO_SHAPE: f64 = 2.0;

impl SessionDist {
    /// A session length with the given median, drawn by inverting the CDF.
    pub fn sample(self, median: Duration, rng: &mut Rng) -> Duration {
        let m = median.as_secs_f64();
        // u in (0, 1]: never take the log of zero.
        let u = 1.0 - rng.unit_f64();
        let secs = match self {
            // Median of Exp(λ) is ln2/λ.
            SessionDist::Exponential => -u.ln() * m / std::f64::consts::LN_2,
            // Median of Weibull(λ, k) is λ (ln 2)^(1/k).
            SessionDist::Weibull => {
                let scale = m / std::f64::consts::LN_2.powf(1.0 / WEIBULL_SHAPE);
                scale * (-u.ln()).powf(1.0 / WEIBULL_SHAPE)
            }
            // Median of Pareto(x_m, α) is x_m 2^(1/α).
            SessionDist::Pareto => {
                let scale = m / 2f64.powf(1.0 / PARETO_SHAPE);
                scale / u.powf(1.0 / PARETO_SHAPE)
            }
        };
        Duration::from_secs_f64(secs.clamp(1.0, 1e9))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_come_out_as_asked() {
        for dist in [SessionDist::Exponential, SessionDist::Weibull, SessionDist::Pareto] {
            let mut rng = Rng::seed_from_u64(11);
            let median = Duration::from_secs(3600);
            let mut samples: Vec<f64> = (0..20_001)
                .map(|_| dist.sample(median, &mut rng).as_secs_f64())
                .collect();
            samples.sort_by(f64::total_cmp);
            let got = samples[10_000];
            assert!((got / 3600.0 - 1.0).abs() < 0.05, "{dist:?}: median {got}");
        }
    }
}
