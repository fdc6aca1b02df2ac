//! `[collections."ID"]`: overrides of a collection preset, or a new collection.

use serde::{Deserialize, Serialize};

use crate::collection::{self, Band, CollectionSpec, DataType, PropertyFilter};

/// `[collections."ID"]`: overrides of a preset, or a new collection.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct CollectionConfig {
    pub bands: Option<Vec<String>>,
    pub properties: Option<Vec<String>>,
    pub nodata: Option<f64>,
    pub data_type: Option<String>,
    pub mosaic_per_day: Option<bool>,
    pub filters: Option<Vec<String>>,
}

impl CollectionConfig {
    /// Applies these overrides to `base` (a preset), or builds a new spec when there is none.
    pub(super) fn apply(
        &self,
        id: &str,
        base: Option<CollectionSpec>,
    ) -> Result<CollectionSpec, Vec<(String, String)>> {
        let mut errs = Vec::new();
        if id.is_empty() || id.starts_with('/') || id.contains("//") {
            errs.push((
                "id".to_string(),
                format!("{id:?} is not an EE collection ID such as LANDSAT/LC08/C02/T1_L2"),
            ));
        }
        let is_new = base.is_none();
        if is_new {
            for (field, set) in [
                ("bands", self.bands.is_some()),
                ("nodata", self.nodata.is_some()),
                ("data_type", self.data_type.is_some()),
            ] {
                if !set {
                    errs.push((
                        field.to_string(),
                        format!(
                            "is required: {id} has no preset (presets: {})",
                            collection::PRESET_IDS.join(", ")
                        ),
                    ));
                }
            }
        }
        let mut spec = base.unwrap_or(CollectionSpec {
            id: id.to_string(),
            bands: Vec::new(),
            properties: vec!["system:index".into(), "system:time_start".into()],
            nodata: 0.0,
            data_type: DataType::Float,
            mosaic_per_day: true,
            filters: Vec::new(),
        });
        if let Some(bands) = &self.bands {
            if bands.is_empty() {
                errs.push(("bands".into(), "must list at least one band".into()));
            }
            let parsed: Vec<Band> = bands
                .iter()
                .filter_map(|b| match Band::try_from(b.clone()) {
                    Ok(b) => Some(b),
                    Err(e) => {
                        errs.push(("bands".into(), e.to_string()));
                        None
                    }
                })
                .collect();
            let mut names: Vec<&str> = parsed.iter().map(|b| b.name.as_str()).collect();
            names.sort_unstable();
            if names.windows(2).any(|w| w[0] == w[1]) {
                errs.push(("bands".into(), "band names must be unique".into()));
            }
            spec.bands = parsed;
        }
        if let Some(p) = &self.properties {
            spec.properties = p.clone();
        }
        if let Some(t) = &self.data_type {
            match DataType::try_from(t.clone()) {
                Ok(t) => spec.data_type = t,
                Err(e) => errs.push(("data_type".into(), e.to_string())),
            }
        }
        if let Some(n) = self.nodata {
            spec.nodata = n;
        }
        if !spec.data_type.holds(spec.nodata) {
            errs.push((
                "nodata".into(),
                format!(
                    "{} does not fit data_type {}",
                    spec.nodata,
                    spec.data_type.name()
                ),
            ));
        }
        if let Some(m) = self.mosaic_per_day {
            spec.mosaic_per_day = m;
        }
        if let Some(filters) = &self.filters {
            spec.filters = filters
                .iter()
                .filter_map(|f| match f.parse::<PropertyFilter>() {
                    Ok(f) => Some(f),
                    Err(e) => {
                        errs.push(("filters".into(), e.to_string()));
                        None
                    }
                })
                .collect();
        }
        if errs.is_empty() { Ok(spec) } else { Err(errs) }
    }
}
