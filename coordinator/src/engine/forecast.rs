//! Per-resource forecast of the next 1 to 24 hours from daily and weekly seasonality and
//! a linear trend, with a persona's weekly profile as the prior shape for a young VM.
//!
//! What it is for: predictive scale-up. The engine asks for the highest value expected in
//! the next hours and scales up *before* it arrives; it never scales down on a forecast.
//! The model is deliberately small and explainable: each completed hour contributes its
//! mean to an hour-of-day slot and an hour-of-week slot (exponentially weighted, so the
//! profile follows a VM whose habits change), and a least-squares line through the last
//! [`TREND_DAYS`] daily means gives the trend. A slot is trusted once it has seen
//! [`MIN_SLOT_SAMPLES`] hours; the weekly profile wins over the daily one when both are
//! trusted. Before that, a persona's hour-of-week p95 shape, scaled to the level seen so
//! far, stands in. Hours are UTC, weeks start on Monday (the persona files' convention).
//!
//! What it is not: a policy (it does not decide sizes) or a general time-series library.

use std::collections::VecDeque;

use serde::Serialize;

/// Days the trend line looks back.
pub const TREND_DAYS: usize = 14;
/// Hours a slot must have seen before its value is used.
pub const MIN_SLOT_SAMPLES: u32 = 3;
/// Weight of the newest hour in its slot (the rest is the slot's history).
const ALPHA: f64 = 0.4;

/// Where a forecast value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Weekly,
    Daily,
    PersonaShape,
    Level,
}

/// One forecast hour.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Point {
    /// Start of the hour (Unix seconds).
    pub at_s: i64,
    pub value: f64,
    pub source: Source,
}

/// Hour of the week, Monday 00:00 UTC = 0 (1970-01-01 was a Thursday).
pub fn hour_of_week(t_s: i64) -> usize {
    let day = t_s.div_euclid(86_400);
    let hour = t_s.rem_euclid(86_400) / 3600;
    (((day + 3).rem_euclid(7)) * 24 + hour) as usize
}

/// The seasonal state of one resource.
#[derive(Debug, Clone)]
pub struct Seasonal {
    daily: [f64; 24],
    daily_n: [u32; 24],
    weekly: [f64; 168],
    weekly_n: [u32; 168],
    /// The hour being accumulated (Unix hour index), its sum and sample count.
    hour: Option<i64>,
    hour_sum: f64,
    hour_n: u32,
    /// Completed days: (day index, sum, count) for the trend.
    days: VecDeque<(i64, f64, u32)>,
    /// EWMA of hourly means (the level a persona shape is scaled to).
    level: Option<f64>,
    /// Running mean of every hourly mean (the baseline before there is a trend line).
    all_sum: f64,
    all_n: u64,
    /// Trend line through the daily means: value = a + b × hour index.
    line: Option<(f64, f64)>,
    /// Persona prior: hour-of-week shape normalised to mean 1.
    prior: Option<Vec<f64>>,
}

impl Default for Seasonal {
    fn default() -> Self {
        Self {
            daily: [0.0; 24],
            daily_n: [0; 24],
            weekly: [0.0; 168],
            weekly_n: [0; 168],
            hour: None,
            hour_sum: 0.0,
            hour_n: 0,
            days: VecDeque::new(),
            level: None,
            all_sum: 0.0,
            all_n: 0,
            line: None,
            prior: None,
        }
    }
}

impl Seasonal {
    /// With a persona's hour-of-week shape (7 rows of 24, Monday first) as the prior.
    /// A shape that is not 7×24 of finite non-negative values with a positive mean is
    /// ignored (the forecast then falls back to the level alone).
    pub fn with_prior(shape: &[Vec<f64>]) -> Self {
        let flat: Vec<f64> = shape.iter().flatten().copied().collect();
        let ok = shape.len() == 7
            && shape.iter().all(|r| r.len() == 24)
            && flat.iter().all(|v| v.is_finite() && *v >= 0.0);
        let mean = flat.iter().sum::<f64>() / 168.0;
        Self {
            prior: (ok && mean > 0.0).then(|| flat.iter().map(|v| v / mean).collect()),
            ..Self::default()
        }
    }

    /// Feeds one sample; samples must come in time order (older ones are ignored).
    pub fn observe(&mut self, t_s: i64, v: f64) {
        if !v.is_finite() {
            return;
        }
        let h = t_s.div_euclid(3600);
        match self.hour {
            Some(cur) if h < cur => {}
            Some(cur) if h == cur => {
                self.hour_sum += v;
                self.hour_n += 1;
            }
            Some(cur) => {
                self.close_hour(cur);
                self.hour = Some(h);
                self.hour_sum = v;
                self.hour_n = 1;
            }
            None => {
                self.hour = Some(h);
                self.hour_sum = v;
                self.hour_n = 1;
            }
        }
    }

    /// The de-seasonalised level expected in hour `hour`: the trend line once there is
    /// one, the mean of everything seen before that.
    fn baseline(&self, hour: i64) -> f64 {
        match self.line {
            Some((a, b)) => a + b * hour as f64,
            None if self.all_n > 0 => self.all_sum / self.all_n as f64,
            None => 0.0,
        }
    }

    fn close_hour(&mut self, hour: i64) {
        let v = self.hour_sum / f64::from(self.hour_n.max(1));
        let t = hour * 3600;
        let d = (t.rem_euclid(86_400) / 3600) as usize;
        let w = hour_of_week(t);
        self.all_sum += v;
        self.all_n += 1;
        // Slots hold the deviation from the baseline, so a trend is not mistaken for
        // seasonality and the forecast does not lag a growing load.
        let dev = v - self.baseline(hour);
        let ewma = |slot: &mut f64, n: &mut u32| {
            *slot = if *n == 0 {
                dev
            } else {
                ALPHA * dev + (1.0 - ALPHA) * *slot
            };
            *n = n.saturating_add(1);
        };
        ewma(&mut self.daily[d], &mut self.daily_n[d]);
        ewma(&mut self.weekly[w], &mut self.weekly_n[w]);
        self.level = Some(self.level.map_or(v, |l| 0.1 * v + 0.9 * l));
        let day = hour.div_euclid(24);
        match self.days.back_mut() {
            Some((dd, s, n)) if *dd == day => {
                *s += v;
                *n += 1;
            }
            _ => {
                self.days.push_back((day, v, 1));
                if self.days.len() > TREND_DAYS {
                    self.days.pop_front();
                }
                self.line = self.fit();
            }
        }
    }

    /// Least squares through the daily means of days with at least 12 hours seen (the
    /// day in progress excluded), when there are at least 3 of them.
    fn fit(&self) -> Option<(f64, f64)> {
        let n_days = self.days.len().saturating_sub(1);
        let pts: Vec<(f64, f64)> = self
            .days
            .iter()
            .take(n_days)
            .filter(|(_, _, n)| *n >= 12)
            .map(|(d, s, n)| ((*d * 24 + 12) as f64, s / f64::from(*n)))
            .collect();
        if pts.len() < 3 {
            return None;
        }
        let n = pts.len() as f64;
        let mx = pts.iter().map(|p| p.0).sum::<f64>() / n;
        let my = pts.iter().map(|p| p.1).sum::<f64>() / n;
        let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
        let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
        if sxx <= 0.0 {
            return None;
        }
        let b = sxy / sxx;
        Some((my - b * mx, b))
    }

    /// Trend in units per hour (0 until there are 3 days to fit a line through).
    pub fn trend_per_hour(&self) -> f64 {
        self.line.map_or(0.0, |(_, b)| b)
    }

    /// Expected mean of the hour starting at `at_s`, and where it came from. `None` before
    /// the first complete hour.
    fn value_at(&self, at_s: i64) -> Option<(f64, Source)> {
        let w = hour_of_week(at_s);
        let d = (at_s.rem_euclid(86_400) / 3600) as usize;
        let hour = at_s.div_euclid(3600);
        let (v, src) = if self.weekly_n[w] >= MIN_SLOT_SAMPLES {
            (self.baseline(hour) + self.weekly[w], Source::Weekly)
        } else if self.daily_n[d] >= MIN_SLOT_SAMPLES {
            (self.baseline(hour) + self.daily[d], Source::Daily)
        } else {
            let level = self.level?;
            match &self.prior {
                Some(p) => (level * p[w], Source::PersonaShape),
                None => (level, Source::Level),
            }
        };
        Some((v.max(0.0), src))
    }

    /// The next `hours` hours (1..=24) from `now_s`, one point per hour.
    pub fn forecast(&self, now_s: i64, hours: u32) -> Vec<Point> {
        let first = now_s.div_euclid(3600) + 1;
        (0..i64::from(hours.clamp(1, 24)))
            .filter_map(|k| {
                let at_s = (first + k) * 3600;
                self.value_at(at_s).map(|(value, source)| Point {
                    at_s,
                    value,
                    source,
                })
            })
            .collect()
    }

    /// The highest point of the next `hours` hours.
    pub fn peak_ahead(&self, now_s: i64, hours: u32) -> Option<Point> {
        self.forecast(now_s, hours)
            .into_iter()
            .max_by(|a, b| a.value.total_cmp(&b.value).then(b.at_s.cmp(&a.at_s)))
    }

    /// Whether the forecast rests on the VM's own seasonality (not the prior or level).
    pub fn has_own_seasonality(&self) -> bool {
        self.daily_n
            .iter()
            .filter(|n| **n >= MIN_SLOT_SAMPLES)
            .count()
            >= 20
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A daily sine: 1 ± 0.5 with its peak at 15:00 UTC.
    fn sine(t_s: i64) -> f64 {
        let phase =
            (t_s.rem_euclid(86_400) as f64 / 86_400.0 - 15.0 / 24.0) * std::f64::consts::TAU;
        1.0 + 0.5 * phase.cos()
    }

    #[test]
    fn daily_sine_peak_is_forecast_at_the_right_hour() {
        let mut s = Seasonal::default();
        let start = 1_700_000_000 / 86_400 * 86_400; // a midnight
        // Four days of 5-minute samples.
        let mut t = start;
        while t < start + 4 * 86_400 {
            s.observe(t, sine(t));
            t += 300;
        }
        // At 06:00 of day 5, the next 24 hours.
        let now = start + 4 * 86_400 + 6 * 3600;
        let f = s.forecast(now, 24);
        assert_eq!(f.len(), 24);
        assert!(f.iter().all(|p| p.source == Source::Daily));
        let peak = s.peak_ahead(now, 24).expect("a peak");
        let hour = peak.at_s.rem_euclid(86_400) / 3600;
        assert!((14..=15).contains(&hour), "peak forecast at {hour}:00");
        assert!((peak.value - 1.5).abs() < 0.05, "peak {}", peak.value);
        // The trough is forecast near 03:00 (at 0.5 plus what the first day's
        // still-settling baseline left in the slots).
        let low = f
            .iter()
            .min_by(|a, b| a.value.total_cmp(&b.value))
            .expect("low");
        let low_hour = low.at_s.rem_euclid(86_400) / 3600;
        assert!((2..=3).contains(&low_hour), "trough at {low_hour}:00");
        assert!(low.value < 0.7, "trough {}", low.value);
        assert!(s.trend_per_hour().abs() < 1e-3);
        // One hour ahead sees nothing of the afternoon peak.
        let near = s.peak_ahead(now, 1).expect("next hour");
        assert!(near.value < 1.0);
    }

    #[test]
    fn trend_is_found_and_extrapolated() {
        let mut s = Seasonal::default();
        let start = 1_700_000_000 / 86_400 * 86_400;
        // A flat load growing by 0.1 per day.
        for k in 0..(6 * 24 * 12) {
            let t = start + k * 300;
            s.observe(t, 1.0 + 0.1 * (t - start) as f64 / 86_400.0);
        }
        let tr = s.trend_per_hour() * 24.0;
        assert!((tr - 0.1).abs() < 0.01, "trend {tr}/day");
        let now = start + 6 * 86_400;
        let p = s.peak_ahead(now, 24).expect("peak");
        assert!(p.value > 1.6 + 0.08, "{p:?}");
    }

    #[test]
    fn young_vm_uses_the_persona_shape() {
        let mut shape = vec![vec![1.0; 24]; 7];
        for row in &mut shape {
            row[10] = 3.0;
        }
        let mut s = Seasonal::with_prior(&shape);
        let start = 1_700_000_000 / 86_400 * 86_400;
        for k in 0..4 {
            s.observe(start + k * 1800, 1.0);
        }
        let p = s.peak_ahead(start + 2 * 3600, 24).expect("peak");
        assert_eq!(p.source, Source::PersonaShape);
        assert_eq!(p.at_s.rem_euclid(86_400) / 3600, 10);
        assert!(Seasonal::with_prior(&[vec![1.0; 3]]).prior.is_none());
        assert!(hour_of_week(4 * 86_400) == 0, "1970-01-05 was a Monday");
    }
}
