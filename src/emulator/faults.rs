//! Fault injection: seeded rates of throttling, outages and failed tasks, plus one-shot faults
//! ("the next N requests to method M answer status S", "the next N tasks fail").

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::{EmulatorOptions, stable_hash, unit};

/// The API methods the emulator counts and can fault, named as in the EE discovery document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ApiMethod {
    #[serde(rename = "value.compute")]
    ValueCompute,
    #[serde(rename = "image.export")]
    ImageExport,
    #[serde(rename = "operations.get")]
    OperationsGet,
    #[serde(rename = "operations.list")]
    OperationsList,
    #[serde(rename = "operations.cancel")]
    OperationsCancel,
    #[serde(rename = "projects.getConfig")]
    ProjectsGetConfig,
    #[serde(rename = "token")]
    Token,
}

impl ApiMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            ApiMethod::ValueCompute => "value.compute",
            ApiMethod::ImageExport => "image.export",
            ApiMethod::OperationsGet => "operations.get",
            ApiMethod::OperationsList => "operations.list",
            ApiMethod::OperationsCancel => "operations.cancel",
            ApiMethod::ProjectsGetConfig => "projects.getConfig",
            ApiMethod::Token => "token",
        }
    }
}

/// A fault to inject, in-process ([`super::RunningEmulator::inject`]) or as the JSON body of
/// `POST /_emulator/faults`, e.g. `{"kind":"next_requests","method":"image.export","count":2,"status":503}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Fault {
    /// Replaces the seeded rates; an absent field keeps its current value.
    Rates {
        throttle_rate: Option<f64>,
        unavailable_rate: Option<f64>,
        fail_rate: Option<f64>,
    },
    /// The next `count` requests to `method` (any API method but `token` when absent) answer
    /// HTTP `status` in Google's error shape. With `processed`, the request takes effect first
    /// and only its response is replaced: an ambiguous failure, as a lost connection gives.
    NextRequests {
        method: Option<ApiMethod>,
        count: u32,
        status: u16,
        message: Option<String>,
        #[serde(default)]
        processed: bool,
    },
    /// The next `count` requests to `method` (any API method but `token` when absent) are
    /// answered only after `millis` milliseconds, as a slow computation or a congested
    /// front end answers.
    DelayNextRequests {
        method: Option<ApiMethod>,
        count: u32,
        millis: u64,
    },
    /// The next `count` exports end FAILED with `message` (default "Computation timed out.").
    NextTasksFail { count: u32, message: Option<String> },
    /// The next `alt=media` download of an object whose name contains `object_contains` stops
    /// after `after_bytes` bytes: the headers announce the whole object, then the connection
    /// drops, as a network cut mid-transfer does. One-shot.
    TruncateNextDownload {
        object_contains: String,
        after_bytes: u64,
    },
    /// Removes pending one-shot faults and sets every rate back to 0.
    Clear,
}

/// An error the fault injector decided a request gets.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Injected {
    pub status: u16,
    pub message: Option<String>,
    pub processed: bool,
}

struct NextRequests {
    method: Option<ApiMethod>,
    remaining: u32,
    injected: Injected,
}

/// Fault state: rate overrides, one-shot queues and the draw counters that make rates
/// deterministic for a seed.
#[derive(Default)]
pub(crate) struct Faults {
    throttle_rate: Option<f64>,
    unavailable_rate: Option<f64>,
    fail_rate: Option<f64>,
    next_requests: Vec<NextRequests>,
    next_task_failures: VecDeque<String>,
    /// Pending truncations: (name substring, bytes sent before the cut).
    truncations: Vec<(String, u64)>,
    /// Pending delays: (method or any, requests left, milliseconds).
    delays: Vec<(Option<ApiMethod>, u32, u64)>,
    draws: u64,
}

pub(crate) const TIMED_OUT: &str = "Computation timed out.";

impl Faults {
    pub fn inject(&mut self, fault: Fault) {
        match fault {
            Fault::Rates {
                throttle_rate,
                unavailable_rate,
                fail_rate,
            } => {
                self.throttle_rate = throttle_rate.or(self.throttle_rate);
                self.unavailable_rate = unavailable_rate.or(self.unavailable_rate);
                self.fail_rate = fail_rate.or(self.fail_rate);
            }
            Fault::NextRequests {
                method,
                count,
                status,
                message,
                processed,
            } => self.next_requests.push(NextRequests {
                method,
                remaining: count,
                injected: Injected {
                    status,
                    message,
                    processed,
                },
            }),
            Fault::DelayNextRequests {
                method,
                count,
                millis,
            } => self.delays.push((method, count, millis)),
            Fault::NextTasksFail { count, message } => {
                let message = message.unwrap_or_else(|| TIMED_OUT.to_owned());
                self.next_task_failures
                    .extend(std::iter::repeat_n(message, count as usize));
            }
            Fault::TruncateNextDownload {
                object_contains,
                after_bytes,
            } => self.truncations.push((object_contains, after_bytes)),
            Fault::Clear => {
                *self = Faults {
                    throttle_rate: Some(0.0),
                    unavailable_rate: Some(0.0),
                    fail_rate: Some(0.0),
                    draws: self.draws,
                    ..Faults::default()
                }
            }
        }
    }

    /// Whether the download of `name` is to be cut, and after how many bytes; consumes the
    /// fault.
    pub fn take_truncation(&mut self, name: &str) -> Option<u64> {
        let index = self
            .truncations
            .iter()
            .position(|(contains, _)| name.contains(contains.as_str()))?;
        Some(self.truncations.remove(index).1)
    }

    /// How long a request to `method` waits before it is handled, if a delay is pending;
    /// consumes one request of the fault.
    pub fn take_delay(&mut self, method: ApiMethod) -> Option<std::time::Duration> {
        let index = self.delays.iter().position(|(m, _, _)| match m {
            Some(m) => *m == method,
            None => method != ApiMethod::Token,
        })?;
        let (_, remaining, millis) = &mut self.delays[index];
        let millis = *millis;
        *remaining = remaining.saturating_sub(1);
        if *remaining == 0 {
            self.delays.remove(index);
        }
        Some(std::time::Duration::from_millis(millis))
    }

    /// Decides whether a request to `method` is answered with an injected error.
    pub fn on_request(&mut self, method: ApiMethod, options: &EmulatorOptions) -> Option<Injected> {
        if let Some(index) = self.next_requests.iter().position(|f| match f.method {
            Some(m) => m == method,
            None => method != ApiMethod::Token,
        }) {
            let fault = &mut self.next_requests[index];
            fault.remaining = fault.remaining.saturating_sub(1);
            let injected = fault.injected.clone();
            if fault.remaining == 0 {
                self.next_requests.remove(index);
            }
            return Some(injected);
        }
        if method == ApiMethod::Token {
            return None;
        }
        self.draws += 1;
        let draw = unit(stable_hash(
            options.seed,
            &["request", &self.draws.to_string()],
        ));
        let throttle = self.throttle_rate.unwrap_or(options.throttle_rate);
        let unavailable = self.unavailable_rate.unwrap_or(options.unavailable_rate);
        let status = if draw < throttle {
            429
        } else if draw < throttle + unavailable {
            503
        } else {
            return None;
        };
        Some(Injected {
            status,
            message: None,
            processed: false,
        })
    }

    /// Decides whether a new export fails. `attempt` is how many exports with this
    /// description exist, this one included.
    pub fn task_failure(
        &mut self,
        description: &str,
        attempt: u64,
        options: &EmulatorOptions,
    ) -> Option<String> {
        if let Some(message) = self.next_task_failures.pop_front() {
            return Some(message);
        }
        if attempt > 1 && !options.fail_repeats {
            return None;
        }
        let rate = self.fail_rate.unwrap_or(options.fail_rate);
        let draw = unit(stable_hash(
            options.seed,
            &["task", description, &attempt.to_string()],
        ));
        (draw < rate).then(|| TIMED_OUT.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_shot_request_faults_are_consumed_per_method() {
        let mut faults = Faults::default();
        let options = EmulatorOptions::default();
        faults.inject(Fault::NextRequests {
            method: Some(ApiMethod::ImageExport),
            count: 2,
            status: 503,
            message: None,
            processed: false,
        });
        assert_eq!(faults.on_request(ApiMethod::OperationsGet, &options), None);
        assert_eq!(
            faults
                .on_request(ApiMethod::ImageExport, &options)
                .map(|i| i.status),
            Some(503)
        );
        assert_eq!(
            faults
                .on_request(ApiMethod::ImageExport, &options)
                .map(|i| i.status),
            Some(503)
        );
        assert_eq!(faults.on_request(ApiMethod::ImageExport, &options), None);
    }

    #[test]
    fn rates_are_seeded_and_roughly_right() {
        let options = EmulatorOptions {
            throttle_rate: 0.2,
            unavailable_rate: 0.1,
            seed: 9,
            ..Default::default()
        };
        let draw = |faults: &mut Faults| {
            (0..2000)
                .map(|_| {
                    faults
                        .on_request(ApiMethod::OperationsGet, &options)
                        .map(|i| i.status)
                })
                .collect::<Vec<_>>()
        };
        let (a, b) = (draw(&mut Faults::default()), draw(&mut Faults::default()));
        assert_eq!(a, b);
        let throttled = a.iter().filter(|s| **s == Some(429)).count();
        let unavailable = a.iter().filter(|s| **s == Some(503)).count();
        assert!((300..500).contains(&throttled), "{throttled}");
        assert!((120..280).contains(&unavailable), "{unavailable}");
    }

    #[test]
    fn by_default_only_the_first_attempt_of_a_description_fails() {
        let options = EmulatorOptions {
            fail_rate: 1.0,
            ..Default::default()
        };
        let mut faults = Faults::default();
        assert_eq!(
            faults.task_failure("t1", 1, &options).as_deref(),
            Some(TIMED_OUT)
        );
        assert_eq!(faults.task_failure("t1", 2, &options), None);
        let repeats = EmulatorOptions {
            fail_repeats: true,
            ..options.clone()
        };
        assert!(faults.task_failure("t1", 2, &repeats).is_some());
        faults.inject(Fault::Clear);
        assert_eq!(faults.task_failure("t2", 1, &options), None);
    }

    #[test]
    fn a_truncation_is_one_shot_and_matches_by_substring() {
        let mut faults = Faults::default();
        faults.inject(Fault::TruncateNextDownload {
            object_contains: ".tif".to_owned(),
            after_bytes: 100,
        });
        assert_eq!(faults.take_truncation("a/b.json"), None);
        assert_eq!(faults.take_truncation("a/b-0000.tif"), Some(100));
        assert_eq!(faults.take_truncation("a/b-0000.tif"), None);
    }

    #[test]
    fn a_delay_counts_down_per_method() {
        let mut faults = Faults::default();
        faults.inject(Fault::DelayNextRequests {
            method: Some(ApiMethod::ValueCompute),
            count: 2,
            millis: 1500,
        });
        assert_eq!(faults.take_delay(ApiMethod::OperationsList), None);
        let delay = Some(std::time::Duration::from_millis(1500));
        assert_eq!(faults.take_delay(ApiMethod::ValueCompute), delay);
        assert_eq!(faults.take_delay(ApiMethod::ValueCompute), delay);
        assert_eq!(faults.take_delay(ApiMethod::ValueCompute), None);
    }

    #[test]
    fn faults_parse_from_json() {
        let fault: Fault = serde_json::from_str(
            r#"{"kind":"next_requests","method":"operations.get","count":1,"status":429}"#,
        )
        .unwrap();
        assert!(matches!(
            fault,
            Fault::NextRequests {
                method: Some(ApiMethod::OperationsGet),
                ..
            }
        ));
        assert!(
            serde_json::from_str::<Fault>(r#"{"kind":"next_tasks_fail","count":1,"colour":"red"}"#)
                .is_err()
        );
    }
}
