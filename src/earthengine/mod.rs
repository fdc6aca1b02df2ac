//! The Earth Engine REST API v1 client: builds expressions, starts exports, tracks operations.
//!
//! - [`expression`]: the computations — the scene listing of a tile-period and the pre-ARD
//!   image that is exported.
//! - [`client`]: [`EarthEngine`], one method per REST call, plus [`export_request`] and
//!   [`request_id`] which make an export idempotent.
//! - [`types`]: the wire types, named as on the wire.
//! - [`error`]: [`EeError`], classified retryable or fatal where it arises. The client never
//!   retries; the jobs do.

pub mod client;
pub mod error;
pub mod expression;
pub mod types;

pub use client::{
    ConcurrencySource, DEFAULT_ENDPOINT, DEFAULT_MAX_CONCURRENT_EXPORTS, EarthEngine,
    ExportConcurrency, ExportParams, export_request, pixel_grid, request_id,
};
pub use error::EeError;
pub use expression::{BandLayout, ImageInfo, Slice, list_images, parse_image_list, preard_image};
pub use types::{ExportImageRequest, Expression, OpView, Operation, OperationState, ProjectConfig};

/// EE's documented cap on queued (PENDING or RUNNING) tasks per project.
pub const EE_QUEUE_CAP: u64 = 3000;
/// Headroom kept below [`EE_QUEUE_CAP`] for tasks started by other tools.
pub const EE_QUEUE_MARGIN: u64 = 100;
/// The most EE tasks cedar keeps active at once: the queue cap minus the margin.
pub const MAX_ACTIVE_EXPORTS: u64 = EE_QUEUE_CAP - EE_QUEUE_MARGIN;
