//! Periods: a date range split into anchored, half-open `[start, end)` intervals.
//!
//! The semantics are the original CEDAR's, which used pandas
//! `date_range(start, end + freq, freq)` and paired consecutive dates:
//! - periods are **anchored** to the frequency (`YS` starts on 1 January, `QS` on 1 January,
//!   April, July and October, `MS` on the 1st, `W` on Sundays); a partial first period before
//!   the first anchor is dropped — [`Periods::dropped`] reports it so callers can warn;
//! - the period that contains `end` is included, and may extend past `end`;
//! - without a frequency there is exactly one period, `[start, end)`.

use std::fmt;
use std::str::FromStr;

use chrono::{Datelike, Days, Months, NaiveDate, Weekday};
use serde::{Deserialize, Serialize};

/// Errors of frequencies and date ranges.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeriodError {
    #[error(
        "frequency {0:?} is not understood; use N followed by YS (years), QS (quarters), MS (months), W (weeks) or D (days), e.g. \"1YS\", \"3MS\", \"16D\""
    )]
    BadFrequency(String),
    #[error("end {end} is not after start {start}; give an end date later than the start")]
    EndNotAfterStart { start: NaiveDate, end: NaiveDate },
    #[error(
        "no complete {freq} period starts between {start} and {end}; move start back to a period boundary or use a shorter frequency"
    )]
    NoPeriods {
        start: NaiveDate,
        end: NaiveDate,
        freq: Frequency,
    },
}

/// One half-open period `[start, end)` of UTC dates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Period {
    pub start: NaiveDate,
    /// Exclusive.
    pub end: NaiveDate,
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..{}", self.start, self.end)
    }
}

/// The unit of a frequency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unit {
    /// `YS`: year start (1 January).
    YearStart,
    /// `QS`: quarter start (1 January, April, July, October).
    QuarterStart,
    /// `MS`: month start.
    MonthStart,
    /// `W`: weeks ending on Sunday (pandas `W-SUN`); periods start on Sundays.
    Week,
    /// `D`: calendar days, not anchored.
    Day,
}

/// A pandas-style frequency alias: `NYS`, `NQS`, `NMS`, `NW` or `ND` (N defaults to 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Frequency {
    pub n: u32,
    pub unit: Unit,
}

impl FromStr for Frequency {
    type Err = PeriodError;

    fn from_str(s: &str) -> Result<Self, PeriodError> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (digits, alias) = t.split_at(split);
        let n = if digits.is_empty() {
            1
        } else {
            digits
                .parse()
                .map_err(|_| PeriodError::BadFrequency(s.into()))?
        };
        let unit = match alias.to_ascii_uppercase().as_str() {
            "YS" | "AS" => Unit::YearStart,
            "QS" => Unit::QuarterStart,
            "MS" => Unit::MonthStart,
            "W" | "W-SUN" => Unit::Week,
            "D" => Unit::Day,
            _ => return Err(PeriodError::BadFrequency(s.into())),
        };
        if n == 0 {
            return Err(PeriodError::BadFrequency(s.into()));
        }
        Ok(Frequency { n, unit })
    }
}

impl TryFrom<String> for Frequency {
    type Error = PeriodError;
    fn try_from(s: String) -> Result<Self, PeriodError> {
        s.parse()
    }
}

impl From<Frequency> for String {
    fn from(f: Frequency) -> String {
        f.to_string()
    }
}

impl fmt::Display for Frequency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let alias = match self.unit {
            Unit::YearStart => "YS",
            Unit::QuarterStart => "QS",
            Unit::MonthStart => "MS",
            Unit::Week => "W",
            Unit::Day => "D",
        };
        write!(f, "{}{alias}", self.n)
    }
}

impl Frequency {
    fn is_anchor(self, d: NaiveDate) -> bool {
        match self.unit {
            Unit::YearStart => d.month() == 1 && d.day() == 1,
            Unit::QuarterStart => d.day() == 1 && (d.month() - 1).is_multiple_of(3),
            Unit::MonthStart => d.day() == 1,
            Unit::Week => d.weekday() == Weekday::Sun,
            Unit::Day => true,
        }
    }

    /// The first anchor on or after `d` (pandas `rollforward`).
    pub fn rollforward(self, d: NaiveDate) -> NaiveDate {
        let mut x = d;
        while !self.is_anchor(x) {
            x = match self.unit {
                // Jump straight to the first of the next month for month-based units.
                Unit::YearStart | Unit::QuarterStart | Unit::MonthStart => {
                    first_of_month(x) + Months::new(1)
                }
                Unit::Week | Unit::Day => x + Days::new(1),
            };
        }
        x
    }

    /// `d` plus `k` steps of the base unit, for an anchored `d`.
    fn step(self, d: NaiveDate, k: u32) -> NaiveDate {
        match self.unit {
            Unit::YearStart => d + Months::new(12 * k),
            Unit::QuarterStart => d + Months::new(3 * k),
            Unit::MonthStart => d + Months::new(k),
            Unit::Week => d + Days::new(7 * u64::from(k)),
            Unit::Day => d + Days::new(u64::from(k)),
        }
    }

    /// `d + n·offset` with pandas semantics: from a date off the anchor, rolling forward to
    /// the next anchor counts as the first of the n steps.
    pub fn add_to(self, d: NaiveDate) -> NaiveDate {
        if self.is_anchor(d) {
            self.step(d, self.n)
        } else {
            self.step(self.rollforward(d), self.n - 1)
        }
    }
}

fn first_of_month(d: NaiveDate) -> NaiveDate {
    d.with_day(1).expect("day 1 exists in every month")
}

/// The periods of a date range, and the partial first period that was dropped, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Periods {
    pub periods: Vec<Period>,
    /// `[start, first anchor)` when `start` was not on an anchor: no period covers it.
    pub dropped: Option<Period>,
}

/// Splits `[start, end]` into periods of `freq` (see the module docs for the semantics).
pub fn periods(
    start: NaiveDate,
    end: NaiveDate,
    freq: Option<Frequency>,
) -> Result<Periods, PeriodError> {
    if end <= start {
        return Err(PeriodError::EndNotAfterStart { start, end });
    }
    let Some(freq) = freq else {
        return Ok(Periods {
            periods: vec![Period { start, end }],
            dropped: None,
        });
    };
    let last = freq.add_to(end);
    let first = freq.rollforward(start);
    let mut points = Vec::new();
    let mut k = 0;
    loop {
        // Stepping from the first anchor by k·n (rather than adding n repeatedly) keeps month
        // arithmetic exact.
        let d = freq.step(first, k * freq.n);
        if d > last {
            break;
        }
        points.push(d);
        k += 1;
    }
    let periods: Vec<Period> = points
        .windows(2)
        .map(|w| Period {
            start: w[0],
            end: w[1],
        })
        .collect();
    if periods.is_empty() {
        return Err(PeriodError::NoPeriods { start, end, freq });
    }
    let dropped = (first > start).then_some(Period { start, end: first });
    Ok(Periods { periods, dropped })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    fn spans(start: &str, end: &str, freq: &str) -> Vec<(String, String)> {
        periods(d(start), d(end), Some(freq.parse().unwrap()))
            .unwrap()
            .periods
            .iter()
            .map(|p| (p.start.to_string(), p.end.to_string()))
            .collect()
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn partial_first_year_is_dropped_and_reported() {
        // Reference §2.2: 1997-06-01..2000-01-01 with 1YS yields 1998, 1999, 2000.
        let p = periods(
            d("1997-06-01"),
            d("2000-01-01"),
            Some("1YS".parse().unwrap()),
        )
        .unwrap();
        assert_eq!(
            p.periods.iter().map(|x| x.start.year()).collect::<Vec<_>>(),
            vec![1998, 1999, 2000]
        );
        assert_eq!(
            p.dropped,
            Some(Period {
                start: d("1997-06-01"),
                end: d("1998-01-01")
            })
        );
    }

    #[test]
    fn period_containing_end_extends_past_it() {
        // Reference §2.2: 1997..2020 with 5YS.
        assert_eq!(
            spans("1997-01-01", "2020-01-01", "5YS"),
            pairs(&[
                ("1997-01-01", "2002-01-01"),
                ("2002-01-01", "2007-01-01"),
                ("2007-01-01", "2012-01-01"),
                ("2012-01-01", "2017-01-01"),
                ("2017-01-01", "2022-01-01"),
            ])
        );
    }

    #[test]
    fn end_on_an_anchor_adds_a_whole_period() {
        // Reference §2.2: 2000-01-01..2001-01-01 with 1YS gives two years.
        assert_eq!(
            spans("2000-01-01", "2001-01-01", "1YS"),
            pairs(&[("2000-01-01", "2001-01-01"), ("2001-01-01", "2002-01-01")])
        );
        let p = periods(
            d("2000-01-01"),
            d("2001-01-01"),
            Some("YS".parse().unwrap()),
        )
        .unwrap();
        assert_eq!(p.dropped, None);
    }

    #[test]
    fn no_frequency_is_one_period() {
        let p = periods(d("2020-03-05"), d("2020-04-01"), None).unwrap();
        assert_eq!(
            p.periods,
            vec![Period {
                start: d("2020-03-05"),
                end: d("2020-04-01")
            }]
        );
    }

    #[test]
    fn quarters_months_weeks_days() {
        assert_eq!(
            spans("2021-02-10", "2021-08-01", "QS"),
            pairs(&[("2021-04-01", "2021-07-01"), ("2021-07-01", "2021-10-01")])
        );
        assert_eq!(
            spans("2021-01-01", "2021-03-15", "MS"),
            pairs(&[
                ("2021-01-01", "2021-02-01"),
                ("2021-02-01", "2021-03-01"),
                ("2021-03-01", "2021-04-01"),
            ])
        );
        assert_eq!(
            spans("2021-01-31", "2021-04-30", "2MS"),
            pairs(&[("2021-02-01", "2021-04-01"), ("2021-04-01", "2021-06-01")])
        );
        // 2021-01-03 is a Sunday.
        assert_eq!(
            spans("2021-01-01", "2021-01-12", "W"),
            pairs(&[("2021-01-03", "2021-01-10"), ("2021-01-10", "2021-01-17")])
        );
        assert_eq!(
            spans("2021-01-01", "2021-01-20", "8D"),
            pairs(&[
                ("2021-01-01", "2021-01-09"),
                ("2021-01-09", "2021-01-17"),
                ("2021-01-17", "2021-01-25"),
            ])
        );
    }

    #[test]
    fn pandas_offset_addition() {
        let f: Frequency = "2YS".parse().unwrap();
        assert_eq!(f.add_to(d("2020-01-01")), d("2022-01-01"));
        // Rolling forward to 2021-01-01 is the first of the two steps.
        assert_eq!(f.add_to(d("2020-06-01")), d("2022-01-01"));
    }

    #[test]
    fn bad_input_is_explained() {
        for bad in ["", "0YS", "1Y", "ms2", "YS1", "-1D"] {
            let e = bad.parse::<Frequency>().unwrap_err();
            assert!(e.to_string().contains("YS (years)"), "{bad}: {e}");
        }
        assert!(matches!(
            periods(d("2020-01-02"), d("2020-01-01"), None),
            Err(PeriodError::EndNotAfterStart { .. })
        ));
        assert!(matches!(
            periods(
                d("2020-06-01"),
                d("2020-07-01"),
                Some("YS".parse().unwrap())
            ),
            Err(PeriodError::NoPeriods { .. })
        ));
        assert_eq!("16d".parse::<Frequency>().unwrap().to_string(), "16D");
    }
}
