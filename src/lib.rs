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
//! # Concepts
//!
//! - [`config`]: typed settings, loaded once (file → environment overrides) and validated.
//! - [`grid`]: the tile grid; a tile index gives exact bounds, affine transform and dimensions.
//! - [`period`]: splits a date range into anchored, half-open periods (pandas semantics).
//! - [`naming`]: the templates that name every exported object and tracking document.
//! - [`order`]: one collection × tile × period, its object names and expected pieces.
//! - [`collection`]: per-collection band selection, properties, nodata, type and filters.
//! - [`cli`]: the command line.
//! - [`demo`]: a whole campaign on embedded defaults (in-process emulator, local folders).
//! - [`bench`]: `cedar bench`, speed and memory figures as ratios against a same-run baseline.
//! - [`soak`]: `cedar soak`, a campaign under every fault at once, then its invariants checked.
//! - [`auth`]: OAuth2 access tokens (service-account key, Application Default Credentials, none).
//! - [`earthengine`]: the EE REST client: expressions, exports, operations, errors.
//! - [`emulator`]: an EE emulator that speaks the same REST API, for tests and demos.
//! - [`jobs`]: one module per stage: export, poll, download, clean.
//! - [`schedule`]: continuous ingest: `[[ingest]]` entries submitted on a cron schedule, exactly once per period.
//! - [`store`]: the export bucket EE writes into, and the destination cedar downloads to.
//! - [`metrics`]: the catalogue of Prometheus metrics, `/metrics`, `/healthz` and `/readyz`.
//! - [`queue`]: the durable jobs of every stage (leases, retries, snooze, admission), run by apalis,
//!   in Redis or, on one machine without a server, in an SQLite file.
//! - [`submit`]: validates a request, records it, and queues its exports in bulk.
//! - [`tracking`]: each submission and the state of its orders (beside the queue), and its JSON document.
//! - [`worker`]: `cedar worker`, every stage against the shared queue, with SIGTERM drain.

pub mod auth;
pub mod campaign;
pub mod collection;
pub mod config;
pub mod document;
pub mod earthengine;
pub mod emulator;
pub mod grid;
pub mod ingest;
pub mod jobs;
pub mod metrics;
pub mod naming;
pub mod order;
pub mod period;
pub mod queue;
pub mod schedule;
pub mod store;
pub mod submit;
pub mod worker;
