//! Random distributions a scenario can name, drawn from a caller-seeded rng
//! (no global randomness, so a run is a function of its seed).
//!
//! In TOML a distribution is either a plain number (a constant) or a table
//! with a `dist` tag:
//!
//! ```toml
//! rtt_ms = 40                                          # constant
//! rtt_ms = { dist = "uniform", min = 5, max = 200 }
//! rtt_ms = { dist = "lognormal", median = 40, sigma = 0.6, max = 400 }
//! rtt_ms = { dist = "choice", values = [10, 80], weights = [3, 1] }
//! ```

use rand::Rng;
use serde::{Deserialize, Deserializer, Serialize};

/// A distribution of non-negative reals.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "dist", rename_all = "snake_case")]
pub enum Dist {
    Const {
        value: f64,
    },
    Uniform {
        min: f64,
        max: f64,
    },
    /// `median × e^(sigma × N(0,1))`, clamped to `[min, max]` when given.
    Lognormal {
        median: f64,
        sigma: f64,
        min: Option<f64>,
        max: Option<f64>,
    },
    /// One of `values`, with probability proportional to `weights`
    /// (equal weights when `weights` is empty).
    Choice {
        values: Vec<f64>,
        weights: Vec<f64>,
    },
}

#[derive(Deserialize)]
#[serde(tag = "dist", rename_all = "snake_case", deny_unknown_fields)]
enum Tagged {
    Const {
        value: f64,
    },
    Uniform {
        min: f64,
        max: f64,
    },
    Lognormal {
        median: f64,
        sigma: f64,
        #[serde(default)]
        min: Option<f64>,
        #[serde(default)]
        max: Option<f64>,
    },
    Choice {
        values: Vec<f64>,
        #[serde(default)]
        weights: Vec<f64>,
    },
}

impl<'de> Deserialize<'de> for Dist {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let v = toml::Value::deserialize(d)?;
        let number = match &v {
            toml::Value::Integer(i) => Some(*i as f64),
            toml::Value::Float(f) => Some(*f),
            _ => None,
        };
        if let Some(value) = number {
            return Ok(Dist::Const { value });
        }
        let t = Tagged::deserialize(v).map_err(|e| {
            D::Error::custom(format!(
                "{} (a distribution is a number or {{ dist = \"const\" | \"uniform\" | \"lognormal\" | \"choice\", ... }})",
                e.message()
            ))
        })?;
        Ok(match t {
            Tagged::Const { value } => Dist::Const { value },
            Tagged::Uniform { min, max } => Dist::Uniform { min, max },
            Tagged::Lognormal {
                median,
                sigma,
                min,
                max,
            } => Dist::Lognormal {
                median,
                sigma,
                min,
                max,
            },
            Tagged::Choice { values, weights } => Dist::Choice { values, weights },
        })
    }
}

impl Dist {
    pub fn constant(value: f64) -> Self {
        Dist::Const { value }
    }

    /// Why the distribution cannot be drawn from, if it cannot.
    pub fn check(&self) -> Result<(), String> {
        let ok = |x: f64| x.is_finite() && x >= 0.0;
        match self {
            Dist::Const { value } if !ok(*value) => Err("value must be finite and >= 0".into()),
            Dist::Uniform { min, max } if !(ok(*min) && ok(*max) && min <= max) => {
                Err("uniform needs 0 <= min <= max".into())
            }
            Dist::Lognormal {
                median,
                sigma,
                min,
                max,
            } => {
                if !(ok(*median) && ok(*sigma)) {
                    return Err("lognormal needs median >= 0 and sigma >= 0".into());
                }
                if let (Some(a), Some(b)) = (min, max)
                    && a > b
                {
                    return Err("lognormal min is above max".into());
                }
                Ok(())
            }
            Dist::Choice { values, weights } => {
                if values.is_empty() || !values.iter().all(|v| ok(*v)) {
                    return Err("choice needs at least one value, all >= 0".into());
                }
                if !weights.is_empty()
                    && (weights.len() != values.len()
                        || !weights.iter().all(|w| ok(*w))
                        || weights.iter().sum::<f64>() <= 0.0)
                {
                    return Err("choice weights: one per value, >= 0, not all 0".into());
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The distribution's median-ish central value (for estimates such as
    /// the expected run length; exact for const/uniform/lognormal).
    pub fn center(&self) -> f64 {
        match self {
            Dist::Const { value } => *value,
            Dist::Uniform { min, max } => (min + max) / 2.0,
            Dist::Lognormal { median, .. } => *median,
            Dist::Choice { values, weights } => {
                if weights.is_empty() {
                    values.iter().sum::<f64>() / values.len().max(1) as f64
                } else {
                    let w: f64 = weights.iter().sum();
                    values.iter().zip(weights).map(|(v, w)| v * w).sum::<f64>() / w
                }
            }
        }
    }

    /// One draw. Always finite and >= 0 for a distribution that passed
    /// `check`.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> f64 {
        match self {
            Dist::Const { value } => *value,
            Dist::Uniform { min, max } => min + (max - min) * rng.random::<f64>(),
            Dist::Lognormal {
                median,
                sigma,
                min,
                max,
            } => {
                let x = median * (sigma * std_normal(rng)).exp();
                x.max(min.unwrap_or(0.0)).min(max.unwrap_or(f64::MAX))
            }
            Dist::Choice { values, weights } => {
                let i = if weights.is_empty() {
                    rng.random_range(0..values.len().max(1))
                } else {
                    pick_weighted(weights, rng)
                };
                values.get(i).copied().unwrap_or(0.0)
            }
        }
    }
}

/// A standard normal draw (Box–Muller; one of the pair is discarded so the
/// number of rng draws per call is fixed).
pub fn std_normal<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>(); // (0, 1]
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// An index drawn with probability proportional to `weights` (which must
/// not all be zero; the last index if rounding runs past the end).
pub fn pick_weighted<R: Rng + ?Sized>(weights: &[f64], rng: &mut R) -> usize {
    let total: f64 = weights.iter().sum();
    let mut x = rng.random::<f64>() * total;
    for (i, w) in weights.iter().enumerate() {
        if x < *w {
            return i;
        }
        x -= w;
    }
    weights.len().saturating_sub(1)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[derive(Deserialize)]
    struct Doc {
        a: Dist,
        b: Dist,
    }

    #[test]
    fn parses_numbers_and_tables() {
        let d: Doc = toml::from_str(
            "a = 3\nb = { dist = \"lognormal\", median = 10, sigma = 0.5, max = 20 }",
        )
        .unwrap();
        assert_eq!(d.a, Dist::constant(3.0));
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..1000 {
            let x = d.b.sample(&mut rng);
            assert!((0.0..=20.0).contains(&x));
        }
    }

    #[test]
    fn bad_keys_are_named_with_the_line() {
        let e = toml::from_str::<Doc>("a = 3\nb = { dist = \"uniform\", min = 1, maxx = 2 }")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("line 2"), "{e}");
        assert!(e.contains("maxx"), "{e}");
    }

    #[test]
    fn weighted_choice_follows_weights() {
        let d = Dist::Choice {
            values: vec![1.0, 2.0],
            weights: vec![9.0, 1.0],
        };
        let mut rng = StdRng::seed_from_u64(7);
        let ones = (0..10_000).filter(|_| d.sample(&mut rng) == 1.0).count();
        assert!((8_700..9_300).contains(&ones), "{ones}");
    }
}
