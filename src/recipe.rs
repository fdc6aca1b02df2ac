//! A recipe is everything that shapes a submission's exports, frozen into the submission when it
//! is recorded.
//!
//! Workers export, name, download and describe a submission's orders from its recipe, never from
//! their own configuration: a campaign cannot change its bands, grid or file settings half-way
//! because a worker was started with another config file. Each recipe also carries a random `id`
//! that gives the submission a folder of its own in the export bucket, so that two exports never
//! share an object — not two submissions of the same items, not two deployments (namespaces,
//! Redis servers) that write into one bucket with the same templates.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::collection::CollectionSpec;
use crate::grid::TileGrid;
use crate::naming::{ItemTemplates, Kind, NamingError, Template};
use crate::order::OrderNames;

/// What a submission exports and where EE writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recipe {
    /// Random, minted at submit: the submission's folder in the export bucket. `None` for a
    /// submission recorded before recipes were frozen, whose objects are where cedar put them
    /// then (`{prefix}/{name}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub grid: TileGrid,
    /// The spec of every collection of the submission.
    pub collections: BTreeMap<String, CollectionSpec>,
    /// The bucket EE exports into.
    pub bucket: String,
    pub name_template: String,
    pub prefix_template: String,
    pub file_dimensions: u32,
    pub cloud_optimized: bool,
    pub max_pixels: u64,
}

/// A recipe's templates, parsed.
#[derive(Debug, Clone)]
pub struct Templates {
    pub name: Template,
    pub prefix: Template,
}

impl Templates {
    pub fn items(&self) -> ItemTemplates<'_> {
        ItemTemplates {
            name: &self.name,
            prefix: &self.prefix,
        }
    }
}

/// Hex digits of a recipe id: 64 random bits.
const ID_HEX: usize = 16;

impl Recipe {
    /// A new, random recipe id.
    pub fn new_id() -> String {
        format!("{:0width$x}", rand::random::<u64>(), width = ID_HEX)
    }

    /// Parses the recipe's templates (they were validated when the recipe was made, but a
    /// recipe read back from the queue is checked again rather than trusted).
    pub fn templates(&self) -> Result<Templates, NamingError> {
        Ok(Templates {
            name: Template::parse(Kind::Name, &self.name_template)?,
            prefix: Template::parse(Kind::Prefix, &self.prefix_template)?,
        })
    }

    /// A digest of everything in the recipe, id included: part of each export's `requestId`,
    /// so that EE answers a request with the task of the same export and never another's.
    pub fn digest(&self) -> String {
        let json = serde_json::to_vec(self).expect("a recipe serializes");
        Sha256::digest(&json)
            .iter()
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Whether `self` and `other` export `collection` into the same pixels and files: the same
    /// spec, grid, bucket and file settings. Names and ids do not count: two submissions that
    /// export alike do the same EE work, whatever they call it.
    pub fn exports_alike(&self, other: &Recipe, collection: &str) -> bool {
        self.collections.get(collection) == other.collections.get(collection)
            && self.grid == other.grid
            && self.bucket == other.bucket
            && self.file_dimensions == other.file_dimensions
            && self.cloud_optimized == other.cloud_optimized
            && self.max_pixels == other.max_pixels
    }

    /// Where export `generation` (1 for the first, one more per `cedar retry`) of an order
    /// named `names` lives in the bucket: `{prefix}/{id}-g{generation}/{name}`, EE's
    /// `filenamePrefix` and the start of every object it writes. A retried order gets a folder
    /// of its own too, so a cancelled task that still finishes cannot mix its files into the
    /// new one's.
    pub fn export_base(&self, names: &OrderNames, generation: u32) -> String {
        match &self.id {
            Some(id) => format!(
                "{}/{id}-g{}/{}",
                names.prefix,
                generation.max(1),
                names.name
            ),
            None => names.object_base(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grid::{Crs, Limits};

    fn recipe(id: Option<&str>) -> Recipe {
        Recipe {
            id: id.map(str::to_string),
            grid: TileGrid {
                name: "test".into(),
                crs: Crs::Code("EPSG:5070".into()),
                ul: [0.0, 0.0],
                res: [30.0, 30.0],
                size: [100, 100],
                limits: Limits {
                    rows: (0, 9),
                    cols: (0, 9),
                },
            },
            collections: BTreeMap::new(),
            bucket: "b".into(),
            name_template: "{collection}_{tile}_{date_start}".into(),
            prefix_template: "CEDAR_PREARD".into(),
            file_dimensions: 1024,
            cloud_optimized: true,
            max_pixels: 1_000_000,
        }
    }

    fn names() -> OrderNames {
        OrderNames {
            name: "C_h0v0_2020-01-01".into(),
            prefix: "CEDAR_PREARD".into(),
        }
    }

    #[test]
    fn each_recipe_and_generation_has_its_own_folder() {
        let a = recipe(Some("00000000000000aa"));
        assert_eq!(
            a.export_base(&names(), 1),
            "CEDAR_PREARD/00000000000000aa-g1/C_h0v0_2020-01-01"
        );
        assert_eq!(
            a.export_base(&names(), 0),
            a.export_base(&names(), 1),
            "a first export counts as generation 1"
        );
        assert_ne!(a.export_base(&names(), 2), a.export_base(&names(), 1));
        let b = recipe(Some("00000000000000bb"));
        assert_ne!(a.export_base(&names(), 1), b.export_base(&names(), 1));
    }

    #[test]
    fn a_recipe_without_id_keeps_the_old_layout() {
        assert_eq!(
            recipe(None).export_base(&names(), 3),
            "CEDAR_PREARD/C_h0v0_2020-01-01"
        );
    }

    #[test]
    fn the_digest_follows_every_setting() {
        let a = recipe(Some("1"));
        assert_eq!(a.digest(), recipe(Some("1")).digest());
        let mut b = a.clone();
        b.file_dimensions = 512;
        assert_ne!(a.digest(), b.digest());
        assert_ne!(a.digest(), recipe(Some("2")).digest());
    }

    #[test]
    fn a_recipe_survives_the_queue() {
        let mut a = recipe(Some(&Recipe::new_id()));
        a.collections.insert(
            "LANDSAT/LC08/C02/T1_L2".into(),
            crate::collection::preset("LANDSAT/LC08/C02/T1_L2").unwrap(),
        );
        let text = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<Recipe>(&text).unwrap(), a);
        assert_eq!(a.id.as_ref().unwrap().len(), ID_HEX);
        a.templates().unwrap();
    }
}
