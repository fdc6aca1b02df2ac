//! Which orders of a submission `cancel` and `retry` act on: the campaign, or the part of it
//! chosen by collection, tile, period and state ("retry the FAILED orders of 2013", "cancel the
//! tiles of row 12"). Positions are computed from the submission, never read, so choosing a few
//! orders of an archive costs as much as those orders.

use std::fmt;

use chrono::NaiveDate;

use crate::order::Order;
use crate::queue::tracking::{OrderState, Submission};

/// The filters of a subset. Each one given narrows it (an order must pass all); within one
/// filter, any of the values given passes. No filter at all chooses every order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subset {
    /// Collection IDs, as submitted.
    pub collections: Vec<String>,
    /// Tiles as (row, col).
    pub tiles: Vec<(u32, u32)>,
    /// Tiles whose row lies in this inclusive range (with `cols`, a rectangle).
    pub rows: Option<(u32, u32)>,
    /// Tiles whose column lies in this inclusive range.
    pub cols: Option<(u32, u32)>,
    /// Periods that end after this day (they overlap `from..=to`).
    pub from: Option<NaiveDate>,
    /// Periods that start on or before this day.
    pub to: Option<NaiveDate>,
    /// Order states.
    pub states: Vec<OrderState>,
    /// How errors name the filters: as `cedar` flags, or as the console's query parameters.
    pub names: Names,
}

/// How a [`SubsetError`] names the filter at fault.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Names {
    /// `--collection C`, `--from D --to D`: the command line's flags.
    #[default]
    Flags,
    /// `collection=C`, `period=D` (`from` = `to`): the web console's query parameters.
    Query,
}

/// A filter that chooses nothing of a submission: bad input, named by its flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubsetError(String);

impl fmt::Display for SubsetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SubsetError {}

impl SubsetError {
    pub(super) fn new(message: String) -> SubsetError {
        SubsetError(message)
    }
}

/// A subset resolved against one submission: the positions of its collections, tiles and
/// periods that pass, and the states wanted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    collections: Vec<usize>,
    tiles: Vec<usize>,
    periods: Vec<usize>,
    states: Vec<OrderState>,
    /// Tiles and periods of the submission, for the order index.
    shape: (usize, usize),
    /// Every position passes (only `states` may narrow).
    whole: bool,
}

/// Parses an order state as `cedar status` prints it, in any case.
pub fn parse_state(s: &str) -> Result<OrderState, String> {
    OrderState::parse(&s.trim().to_ascii_uppercase()).ok_or_else(|| {
        format!(
            "{s:?} is not an order state; one of {}",
            OrderState::ALL.map(|s| s.as_str()).join(", ")
        )
    })
}

impl Subset {
    /// No filter: the whole submission.
    pub fn everything() -> Subset {
        Subset::default()
    }

    /// `filter` with `value` as the caller wrote it: `--filter value` or `filter=value`.
    pub fn named(&self, filter: &str, value: impl fmt::Display) -> String {
        match self.names {
            Names::Flags => format!("--{filter} {value}"),
            Names::Query => format!("{filter}={value}"),
        }
    }

    /// The days asked for, as the caller wrote them.
    fn days(&self) -> String {
        match (self.names, self.from, self.to) {
            (Names::Query, Some(from), Some(to)) if from == to => self.named("period", from),
            _ => [("from", self.from), ("to", self.to)]
                .into_iter()
                .filter_map(|(flag, d)| d.map(|d| self.named(flag, d)))
                .collect::<Vec<_>>()
                .join(" "),
        }
    }

    /// Resolves the filters against `sub`. A value that names nothing of it (a collection it
    /// does not export, a tile it lacks, days outside its periods) is an error naming the flag,
    /// never an empty subset: a typo must not look like "nothing to do".
    pub fn select(&self, sub: &Submission) -> Result<Selection, SubsetError> {
        let err = |m: String| Err(SubsetError(m));
        let name = &sub.name;
        if sub.order_count() == 0 {
            return err(format!("{name} has no orders to choose from"));
        }
        for c in &self.collections {
            if !sub.collections.contains(c) {
                return err(format!(
                    "{}: {name} exports no such collection; its collections: {}",
                    self.named("collection", c),
                    sub.collections.join(", ")
                ));
            }
        }
        for &(r, c) in &self.tiles {
            if !sub.tiles.contains(&(r, c)) {
                return err(format!(
                    "{}: not a tile of {name}; `cedar show {name}` lists its {} tiles",
                    self.named("tile", format!("{r},{c}")),
                    sub.tiles.len()
                ));
            }
        }
        if let (Some(from), Some(to)) = (self.from, self.to)
            && from > to
        {
            return err(format!(
                "{} is after {}; give the earlier day first",
                self.named("from", from),
                self.named("to", to)
            ));
        }
        let collections = positions(&sub.collections, |c| {
            self.collections.is_empty() || self.collections.contains(c)
        });
        let in_range =
            |v: u32, range: Option<(u32, u32)>| range.is_none_or(|(a, b)| (a..=b).contains(&v));
        let tiles = positions(&sub.tiles, |&(r, c)| {
            (self.tiles.is_empty() || self.tiles.contains(&(r, c)))
                && in_range(r, self.rows)
                && in_range(c, self.cols)
        });
        if tiles.is_empty() {
            // Only a rectangle can miss every tile: a tile given is one of the submission's.
            let mut flags: Vec<String> = self
                .tiles
                .iter()
                .map(|(r, c)| self.named("tile", format!("{r},{c}")))
                .collect();
            for (flag, range) in [("rows", self.rows), ("cols", self.cols)] {
                if let Some((a, b)) = range {
                    flags.push(self.named(flag, format!("{a}-{b}")));
                }
            }
            return err(format!(
                "{}: none of the {} tiles of {name} lies there; widen the range",
                flags.join(" "),
                sub.tiles.len()
            ));
        }
        let periods = positions(&sub.periods, |p| {
            self.from.is_none_or(|d| p.end > d) && self.to.is_none_or(|d| p.start <= d)
        });
        if periods.is_empty() {
            let (first, last) = (sub.periods.first(), sub.periods.last());
            let span = first.zip(last).map_or("none".to_string(), |(f, l)| {
                format!("{} to {}", f.start, l.end.pred_opt().unwrap_or(l.end))
            });
            return err(format!(
                "{}: no period of {name} falls there; its periods cover {span}",
                self.days()
            ));
        }
        let whole = collections.len() == sub.collections.len()
            && tiles.len() == sub.tiles.len()
            && periods.len() == sub.periods.len();
        Ok(Selection {
            collections,
            tiles,
            periods,
            states: self.states.clone(),
            shape: (sub.tiles.len(), sub.periods.len()),
            whole,
        })
    }
}

/// The positions of `items` that `keep` passes.
fn positions<T>(items: &[T], keep: impl Fn(&T) -> bool) -> Vec<usize> {
    items
        .iter()
        .enumerate()
        .filter(|(_, x)| keep(x))
        .map(|(i, _)| i)
        .collect()
}

impl Selection {
    /// Every order of the submission is chosen by position (states may still narrow).
    pub fn is_whole(&self) -> bool {
        self.whole
    }

    /// No filter at all: every order, whatever its state.
    pub fn is_everything(&self) -> bool {
        self.whole && self.states.is_empty()
    }

    /// Whether an order in `state` is chosen (positions aside).
    pub fn wants(&self, state: OrderState) -> bool {
        self.states.is_empty() || self.states.contains(&state)
    }

    /// How many positions are chosen.
    pub fn len(&self) -> usize {
        self.collections.len() * self.tiles.len() * self.periods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The chosen orders' indices in [`Submission::orders`], ascending.
    pub fn indices(&self) -> impl Iterator<Item = usize> + '_ {
        let (nt, np) = self.shape;
        self.collections.iter().flat_map(move |&c| {
            self.tiles
                .iter()
                .flat_map(move |&t| self.periods.iter().map(move |&p| (c * nt + t) * np + p))
        })
    }

    /// The chosen orders of `sub` (the submission it was selected from) with their indices.
    pub fn orders<'a>(&'a self, sub: &'a Submission) -> impl Iterator<Item = (usize, Order)> + 'a {
        self.indices().map(|i| (i, sub.order_at(i)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    /// 2 collections × 3 tiles × 12 monthly periods of 2013.
    fn submission() -> Submission {
        let periods = crate::period::periods(
            day(2013, 1, 1),
            day(2013, 12, 31),
            Some("MS".parse().unwrap()),
        )
        .unwrap()
        .periods;
        assert_eq!(periods.len(), 12);
        Submission {
            name: "camp".into(),
            submitted: chrono::Utc::now(),
            collections: vec!["A".into(), "B".into()],
            tiles: vec![(3, 10), (3, 11), (4, 10)],
            period_start: day(2013, 1, 1),
            period_end: day(2013, 12, 31),
            period_freq: Some("MS".into()),
            periods,
            save_empty_metadata: true,
            error_if_empty: false,
            recipe: None,
            workload_tag: None,
            ingest: None,
            priority: None,
        }
    }

    fn chosen(sub: &Submission, s: &Subset) -> Vec<Order> {
        s.select(sub).unwrap().orders(sub).map(|(_, o)| o).collect()
    }

    #[test]
    fn no_filter_chooses_every_order_in_order() {
        let sub = submission();
        let sel = Subset::everything().select(&sub).unwrap();
        assert!(sel.is_everything());
        assert_eq!(sel.len(), sub.order_count());
        let all: Vec<Order> = sub.orders().collect();
        assert_eq!(chosen(&sub, &Subset::everything()), all);
        assert!(sel.indices().eq(0..sub.order_count()));
    }

    #[test]
    fn filters_narrow_and_indices_are_the_orders_positions() {
        let sub = submission();
        let s = Subset {
            collections: vec!["B".into()],
            rows: Some((3, 3)),
            from: Some(day(2013, 3, 15)),
            to: Some(day(2013, 5, 1)),
            ..Subset::default()
        };
        let sel = s.select(&sub).unwrap();
        assert!(!sel.is_whole());
        let all: Vec<Order> = sub.orders().collect();
        let got: Vec<(usize, Order)> = sel.orders(&sub).collect();
        // March (contains the 15th), April, May (starts on the 1st), for tiles 3,10 and 3,11.
        assert_eq!(got.len(), 2 * 3);
        for (i, o) in &got {
            assert_eq!(&all[*i], o);
            assert_eq!(o.collection, "B");
            assert_eq!(o.row, 3);
            assert!((3..=5).contains(&chrono::Datelike::month(&o.period.start)));
        }
        let want: Vec<Order> = all
            .iter()
            .filter(|o| {
                o.collection == "B"
                    && o.row == 3
                    && o.period.end > day(2013, 3, 15)
                    && o.period.start <= day(2013, 5, 1)
            })
            .cloned()
            .collect();
        assert_eq!(got.into_iter().map(|(_, o)| o).collect::<Vec<_>>(), want);
    }

    #[test]
    fn tiles_and_states() {
        let sub = submission();
        let s = Subset {
            tiles: vec![(4, 10)],
            states: vec![OrderState::Failed, OrderState::Lost],
            ..Subset::default()
        };
        let sel = s.select(&sub).unwrap();
        assert_eq!(sel.len(), 2 * 12);
        assert!(sel.wants(OrderState::Failed) && !sel.wants(OrderState::Cancelled));
        assert!(chosen(&sub, &s).iter().all(|o| (o.row, o.col) == (4, 10)));
        // States alone keep every position.
        let only_states = Subset {
            states: vec![OrderState::Failed],
            ..Subset::default()
        };
        let sel = only_states.select(&sub).unwrap();
        assert!(sel.is_whole() && !sel.is_everything());
    }

    #[test]
    fn a_filter_that_names_nothing_is_an_error_naming_its_flag() {
        let sub = submission();
        let bad = |s: Subset| s.select(&sub).unwrap_err().to_string();
        let e = bad(Subset {
            collections: vec!["C".into()],
            ..Subset::default()
        });
        assert!(
            e.starts_with("--collection C: camp exports no such collection"),
            "{e}"
        );
        assert!(e.contains("A, B"), "{e}");
        let e = bad(Subset {
            tiles: vec![(9, 9)],
            ..Subset::default()
        });
        assert!(e.starts_with("--tile 9,9: not a tile of camp"), "{e}");
        let e = bad(Subset {
            rows: Some((5, 8)),
            ..Subset::default()
        });
        assert!(e.starts_with("--rows 5-8: none of the 3 tiles"), "{e}");
        let e = bad(Subset {
            from: Some(day(2014, 1, 1)),
            ..Subset::default()
        });
        assert!(
            e.starts_with("--from 2014-01-01: no period of camp falls there")
                && e.contains("2013-01-01 to 2013-12-31"),
            "{e}"
        );
        let e = bad(Subset {
            from: Some(day(2013, 5, 1)),
            to: Some(day(2013, 4, 1)),
            ..Subset::default()
        });
        assert!(
            e.starts_with("--from 2013-05-01 is after --to 2013-04-01"),
            "{e}"
        );
        let e = bad(Subset {
            tiles: vec![(3, 10)],
            rows: Some((4, 4)),
            ..Subset::default()
        });
        assert!(
            e.starts_with("--tile 3,10 --rows 4-4: none of the 3 tiles"),
            "{e}"
        );
    }

    #[test]
    fn the_console_s_filters_are_named_as_its_query_parameters() {
        let sub = submission();
        let d = day(2014, 3, 1);
        let e = Subset {
            collections: vec!["C".into()],
            names: Names::Query,
            ..Subset::default()
        }
        .select(&sub)
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("collection=C: "), "{e}");
        let e = Subset {
            from: Some(d),
            to: Some(d),
            names: Names::Query,
            ..Subset::default()
        }
        .select(&sub)
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("period=2014-03-01: no period of camp"), "{e}");
    }

    #[test]
    fn a_submission_without_orders_has_nothing_to_choose() {
        let mut sub = submission();
        sub.tiles.clear();
        let e = Subset::everything().select(&sub).unwrap_err().to_string();
        assert_eq!(e, "camp has no orders to choose from");
    }

    #[test]
    fn states_parse_in_any_case() {
        assert_eq!(parse_state("failed"), Ok(OrderState::Failed));
        assert_eq!(parse_state("LOST"), Ok(OrderState::Lost));
        let e = parse_state("broken").unwrap_err();
        assert!(
            e.contains("not an order state") && e.contains("FAILED"),
            "{e}"
        );
    }
}
