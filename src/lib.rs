//! cedar runs Google Earth Engine (EE) export campaigns ("pre-ARD").
//!
//! A campaign asks, for every tile of a fixed tile grid and every time period, for the images of
//! an EE collection exported as GeoTIFF (plus a JSON metadata file) into a Cloud Storage bucket;
//! cedar then downloads, verifies and cleans them up.
//!
//! # Lifecycle of one tile-period
//!
//! submit → export → poll → download → clean
//!
//! 1. **submit** validates the request against the [`config`], expands it into
//!    collection × [`grid`] tile × [`period`] items named by [`naming`].
//! 2. **export** lists the images of the item with `value:compute`, builds the pre-ARD
//!    [`earthengine::expression`] and starts an `image:export` with a deterministic `requestId`.
//! 3. **poll** follows the EE operation until it is done.
//! 4. **download** copies every exported object from the export bucket ([`store`]) to the
//!    destination, verifying sizes and checksums.
//! 5. **clean** deletes the exported objects from the bucket.
//!
//! # Layers
//!
//! Each module imports only from its own layer (without a circle) and from the layers below;
//! `tests/it/layers.rs` checks it against every `use` line.
//!
//! ```text
//! front ends   cli · demo · bench · soak                 (the binary, src/main.rs)
//! runtime      worker (+ its HTTP server) · web
//! pipeline     jobs · submit · schedule · document · campaign
//! config       config
//! adapters     auth · queue (+ tracking, snapshot) · store · metrics · earthengine
//! domain       grid · period · naming · collection · order · recipe · ingest
//!
//! emulator     self-contained: imports nothing from the rest of the crate
//! ```
//!
//! **Domain** — pure values and rules, no I/O:
//! - [`grid`]: the tile grid; a tile index gives exact bounds, affine transform and dimensions.
//! - [`period`]: splits a date range into anchored, half-open periods (pandas semantics).
//! - [`naming`]: the templates that name every exported object and tracking document.
//! - [`collection`]: per-collection band selection, properties, nodata, type and filters.
//! - [`order`]: one collection × tile × period, its object names and expected pieces.
//! - [`recipe`]: everything that shapes a submission's exports, frozen into it at submit, and
//!   the submission's own folder in the export bucket.
//! - [`ingest`]: an `[[ingest]]` entry and which of its periods are due on a given day.
//!
//! **Adapters** — one seam per remote, each with a real side tested on loopback:
//! - [`auth`]: OAuth2 access tokens (service-account key, Application Default Credentials, none).
//! - [`queue`]: the durable jobs of every stage (leases, retries, snooze, admission) in Redis or,
//!   on one machine without a server, in an SQLite file; beside them the tracking state of each
//!   submission ([`queue::tracking`]) and the EE operations snapshot ([`queue::snapshot`]).
//! - [`store`]: the export bucket EE writes into, and the destination cedar downloads to.
//! - [`metrics`]: the catalogue of Prometheus metrics and the functions that record them.
//! - [`earthengine`]: the EE REST client: expressions, exports, operations, errors, EE's limits.
//!
//! **Config** — [`config`]: typed settings, loaded once (file → environment overrides) and
//! validated section by section.
//!
//! **Pipeline** — what a campaign does:
//! - [`jobs`]: one module per stage: export, poll, download, clean; beside them admission and
//!   the EECU budget that can pause it.
//! - [`submit`]: validates a request, records it, and queues its exports in bulk.
//! - [`schedule`]: runs the `[[ingest]]` entries on their cron schedule, exactly once per period,
//!   and reads back what each has done (`status`: what `cedar ingest list` and the metrics show).
//! - [`document`]: each submission's tracking JSON document in the store.
//! - [`campaign`]: operations on a recorded submission: update, cancel, retry.
//!
//! **Runtime** — [`worker`]: `cedar worker`, every stage against the shared queue, with SIGTERM
//! drain, and its `/metrics`, `/healthz`, `/readyz` endpoint; [`web`]: the web console (every
//! campaign, each on its tile map, and a JSON API), served by the worker and by `cedar web`.
//!
//! **Front ends** live in the binary target (`src/main.rs` declares them): `cli` (the command
//! line, `cedar doctor` among it: every remote a campaign needs, checked), `demo` (a whole campaign on embedded defaults), `bench` (speed and memory figures as
//! ratios against a same-run baseline) and `soak` (a campaign under every fault at once, then
//! its invariants checked).
//!
//! [`emulator`]: an EE emulator that speaks the same REST API, for tests and demos; it shares no
//! type with the client, so that it can disagree with it.

// Domain.
pub mod collection;
pub mod grid;
pub mod ingest;
pub mod naming;
pub mod order;
pub mod period;
pub mod recipe;

// Adapters.
pub mod auth;
pub mod earthengine;
pub mod metrics;
pub mod queue;
pub mod store;

// Config.
pub mod config;

// Pipeline.
pub mod campaign;
pub mod document;
pub mod jobs;
pub mod schedule;
pub mod submit;

// Runtime.
pub mod web;
pub mod worker;

// Self-contained.
pub mod emulator;
