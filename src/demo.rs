//! `cedar demo`: a whole campaign on embedded defaults — an in-process EE emulator, a local
//! folder as the export bucket and another as the destination — so a newcomer sees every stage
//! work without a Google account or any server.
//!
//! The demo drives the stages in one process: list and export every order, poll the operations
//! in batches (one `operations.list` sweep per tick, never one `operations.get` per task),
//! download and verify each finished export, and clean the bucket.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt;

use crate::auth::NoAuth;
use crate::config::{Config, Settings};
use crate::earthengine::client::{EarthEngine, ExportParams, export_request, request_id};
use crate::earthengine::expression::{list_images, parse_image_list, preard_image};
use crate::earthengine::types::OperationState;
use crate::emulator::{self, EmulatorOptions};
use crate::order::{Order, OrderNames, parse_piece, piece_object, tile_pieces};
use crate::period::{Frequency, periods};
use crate::store::{Destination, Expected, ExportBucket, open_bucket};

/// Options of `cedar demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Folder for the emulated bucket and the downloads (created; reused runs start clean).
    #[arg(long, default_value = "cedar-demo")]
    pub dir: PathBuf,
    /// Emulated seconds each export runs.
    #[arg(long, default_value_t = 2.0)]
    pub task_seconds: f64,
}

/// Where each order ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    Empty,
    Downloaded,
    Failed,
}

struct Demo {
    settings: Settings,
    ee: EarthEngine,
    bucket: Arc<dyn ExportBucket>,
    dest: Destination,
    tracking: String,
}

/// Runs the demo and prints a summary.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let root = std::path::absolute(&args.dir)?;
    let bucket_dir = root.join("bucket");
    let dest_dir = root.join("downloads");
    for d in [&bucket_dir, &dest_dir] {
        if d.exists() {
            std::fs::remove_dir_all(d).with_context(|| format!("clearing {}", d.display()))?;
        }
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let store = Arc::new(object_store::local::LocalFileSystem::new_with_prefix(
        &bucket_dir,
    )?);
    let emulator = emulator::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        store,
        EmulatorOptions {
            project: Some("cedar-demo".into()),
            bucket: Some("cedar-demo".into()),
            task_seconds: args.task_seconds,
            max_concurrent_exports: 8,
            // Small files keep the demo quick; sizes still scale with pixels and bands.
            bytes_per_pixel: 1.0 / 8192.0,
            ..EmulatorOptions::default()
        },
    )
    .await?;
    println!("EE emulator listening on {}", emulator.url());

    let mut config = Config::default();
    config.earthengine.project = "cedar-demo".into();
    config.earthengine.endpoint = emulator.url();
    config.earthengine.credentials = Some("none".into());
    config.export.bucket = "cedar-demo".into();
    config.store.url = url::Url::from_directory_path(&bucket_dir)
        .map_err(|()| anyhow::anyhow!("{} is not absolute", bucket_dir.display()))?
        .to_string();
    config.download.dest = dest_dir.display().to_string();
    let settings = config.validate()?;

    let ee = EarthEngine::new(
        &settings.config.earthengine.endpoint,
        &settings.config.earthengine.project,
        Arc::new(NoAuth),
        Duration::from_secs(settings.config.earthengine.timeout_secs),
    )?;
    let bucket = open_bucket(&settings.store_url, None, Arc::new(NoAuth))?;
    let dest = Destination::open(&settings.config.download.dest)?;

    // 2 collections × 6 tiles × 4 quarters from mid 2021: Landsat 9 data starts on 2021-10-31,
    // so its first quarter is empty everywhere.
    let collections = ["LANDSAT/LC08/C02/T1_L2", "LANDSAT/LC09/C02/T1_L2"];
    let tiles: Vec<(u32, u32)> = (10..12)
        .flat_map(|r| (14..17).map(move |c| (r, c)))
        .collect();
    let freq: Frequency = "3MS".parse()?;
    let start = chrono::NaiveDate::from_ymd_opt(2021, 7, 1).expect("valid date");
    let end = chrono::NaiveDate::from_ymd_opt(2022, 6, 30).expect("valid date");
    let quarters = periods(start, end, Some(freq))?.periods;
    let mut orders = Vec::new();
    for c in collections {
        for (row, col) in &tiles {
            for p in &quarters {
                orders.push(Order {
                    collection: c.to_string(),
                    row: *row,
                    col: *col,
                    period: *p,
                });
            }
        }
    }
    let now = chrono::Utc::now();
    let collection_names: Vec<String> = collections.iter().map(|c| c.to_string()).collect();
    let tracking = settings
        .tracking_template
        .render_tracking(&crate::naming::TrackingValues {
            collections: &collection_names,
            tiles: &tiles,
            period_start: start,
            period_end: end,
            period_freq: Some(freq),
            now,
        })?;
    println!(
        "submitting {} orders ({} collections x {} tiles x {} periods) as {tracking}",
        orders.len(),
        collections.len(),
        tiles.len(),
        quarters.len()
    );

    let demo = Arc::new(Demo {
        settings,
        ee,
        bucket,
        dest,
        tracking,
    });
    let started = Instant::now();

    // Export: list the scenes of each order, then start one export per non-empty order.
    let mut outcomes: BTreeMap<Order, Outcome> = BTreeMap::new();
    let mut running: BTreeMap<String, (Order, OrderNames)> = BTreeMap::new();
    let exports = futures::stream::iter(orders.iter().cloned().map(|order| {
        let demo = demo.clone();
        async move {
            let r = demo.export(&order, now).await;
            (order, r)
        }
    }))
    .buffer_unordered(8)
    .collect::<Vec<_>>()
    .await;
    for (order, r) in exports {
        match r? {
            None => {
                outcomes.insert(order, Outcome::Empty);
            }
            Some((operation, names)) => {
                running.insert(operation, (order, names));
            }
        }
    }
    println!(
        "{} exports started, {} orders empty ({:.1}s)",
        running.len(),
        outcomes.len(),
        started.elapsed().as_secs_f64()
    );

    // Poll in batches: one sweep of operations.list per tick covers every task.
    let mut bytes = 0u64;
    let mut files = 0usize;
    while !running.is_empty() {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let ops = demo.ee.list_all_operations().await?;
        for op in ops {
            let Some(name) = op.name.clone() else {
                continue;
            };
            if !running.contains_key(&name) || !op.state().is_terminal() {
                continue;
            }
            let (order, names) = running.remove(&name).expect("checked above");
            if op.state() == OperationState::Succeeded {
                let (n, b) = demo.download_and_clean(&order, &names).await?;
                files += n;
                bytes += b;
                outcomes.insert(order, Outcome::Downloaded);
            } else {
                let why = op.error.as_ref().and_then(|e| e.message.clone());
                println!(
                    "{}: {:?} {}",
                    names.name,
                    op.state(),
                    why.unwrap_or_default()
                );
                outcomes.insert(order, Outcome::Failed);
            }
        }
        println!(
            "  {} running, {} done ({:.1}s)",
            running.len(),
            outcomes.len(),
            started.elapsed().as_secs_f64()
        );
    }

    let stats = emulator.stats();
    emulator.shutdown().await;
    println!();
    println!(
        "{:<26} {:>6} {:>10} {:>6}",
        "collection", "empty", "downloaded", "failed"
    );
    for c in &collections {
        let count = |o: Outcome| {
            outcomes
                .iter()
                .filter(|(k, v)| k.collection == *c && **v == o)
                .count()
        };
        println!(
            "{:<26} {:>6} {:>10} {:>6}",
            c,
            count(Outcome::Empty),
            count(Outcome::Downloaded),
            count(Outcome::Failed)
        );
    }
    println!(
        "\n{files} files, {bytes} bytes verified (size, md5, crc32c) in {}",
        dest_dir.join(&demo.tracking).display()
    );
    println!(
        "EE requests: {}; took {:.1}s",
        serde_json::to_string(&stats.requests)?,
        started.elapsed().as_secs_f64()
    );
    let failed = outcomes.values().filter(|o| **o == Outcome::Failed).count();
    anyhow::ensure!(failed == 0, "{failed} orders failed");
    Ok(())
}

impl Demo {
    /// Lists the order's scenes and starts its export; `None` when it has no scenes.
    async fn export(
        &self,
        order: &Order,
        now: chrono::DateTime<chrono::Utc>,
    ) -> anyhow::Result<Option<(String, OrderNames)>> {
        let spec = &self.settings.collections[&order.collection];
        let tile = self.settings.grid.tile(order.row, order.col)?;
        let names = order.names(&self.settings, now)?;
        let listed = self
            .ee
            .compute_value(&list_images(spec, &tile, &order.period))
            .await?;
        let images = parse_image_list(spec, &listed)?;
        if images.is_empty() {
            return Ok(None);
        }
        let (expression, _layout) = preard_image(spec, &images);
        let export = &self.settings.config.export;
        let params = ExportParams {
            bucket: export.bucket.clone(),
            filename_prefix: names.object_base(),
            description: names.name.clone(),
            request_id: request_id(&[names.object_base().as_str(), &self.tracking]),
            file_dimensions: Some(export.file_dimensions),
            cloud_optimized: export.cloud_optimized,
            max_pixels: Some(export.max_pixels as i64),
        };
        let op = self
            .ee
            .export_image(&export_request(&tile, expression, &params))
            .await?;
        Ok(Some((op.name.unwrap_or_default(), names)))
    }

    /// Downloads every piece of a finished export, verified, then deletes them from the bucket.
    async fn download_and_clean(
        &self,
        order: &Order,
        names: &OrderNames,
    ) -> anyhow::Result<(usize, u64)> {
        let tile = self.settings.grid.tile(order.row, order.col)?;
        let base = names.object_base();
        let expected = tile_pieces(&tile, self.settings.config.export.file_dimensions);
        let listed = self.bucket.list(&base).await?;
        let found: BTreeMap<_, _> = listed
            .iter()
            .filter_map(|o| parse_piece(&base, &o.name).map(|p| (p, o)))
            .collect();
        let missing: Vec<String> = expected
            .iter()
            .filter(|p| !found.contains_key(p))
            .map(|p| piece_object(&base, *p))
            .collect();
        anyhow::ensure!(
            missing.is_empty(),
            "{}: missing pieces {missing:?}",
            names.name
        );
        let mut bytes = 0;
        for object in found.values() {
            let file = object.name.rsplit('/').next().unwrap_or(&object.name);
            let rel = format!("{}/{file}", self.tracking);
            let stream = self.bucket.stream(&object.name).await?;
            let written = self
                .dest
                .write_verified(
                    &rel,
                    stream,
                    Expected {
                        size: object.size,
                        md5: object.md5,
                        crc32c: object.crc32c,
                    },
                )
                .await?;
            bytes += written.size;
        }
        for object in found.values() {
            self.bucket.delete(&object.name).await?;
        }
        Ok((found.len(), bytes))
    }
}
