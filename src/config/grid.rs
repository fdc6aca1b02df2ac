//! `[grid]`: a shipped preset or an explicit tile grid, resolved into a [`TileGrid`].

use serde::{Deserialize, Serialize};

use crate::grid::{Crs, Limits, TileGrid};

/// `[grid]`: a preset, or an explicit grid.
///
/// Without a `[grid]` table the default preset applies ([`GridConfig::default`]). A `[grid]`
/// table that is present starts from nothing, not from the default preset: otherwise a file
/// giving `crs`, `ul`, `res`, `size` and `limits` would always collide with the preset it never
/// asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]

pub struct GridConfig {
    #[serde(default)]
    pub preset: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub crs: Option<String>,
    #[serde(default)]
    pub ul: Option<[f64; 2]>,
    #[serde(default)]
    pub res: Option<[f64; 2]>,
    #[serde(default)]
    pub size: Option<[u32; 2]>,
    #[serde(default)]
    pub limits: Option<[[u32; 2]; 2]>,
}

impl Default for GridConfig {
    fn default() -> Self {
        GridConfig {
            preset: Some("Landsat ARD v1 - CONUS".into()),
            name: None,
            crs: None,
            ul: None,
            res: None,
            size: None,
            limits: None,
        }
    }
}

impl GridConfig {
    pub(super) fn resolve(&self) -> Result<TileGrid, Vec<(String, String)>> {
        let explicit = [
            self.name.is_some(),
            self.crs.is_some(),
            self.ul.is_some(),
            self.res.is_some(),
            self.size.is_some(),
            self.limits.is_some(),
        ];
        if let Some(preset) = &self.preset {
            if explicit.iter().any(|x| *x) {
                return Err(vec![(
                    "grid".into(),
                    "set either preset or name/crs/ul/res/size/limits, not both".into(),
                )]);
            }
            return TileGrid::preset(preset)
                .map_err(|e| vec![("grid.preset".into(), e.to_string())]);
        }
        let mut missing = Vec::new();
        let need = |v: bool, key: &str, missing: &mut Vec<(String, String)>| {
            if !v {
                missing.push((
                    format!("grid.{key}"),
                    "is required when no grid preset is set (see config/default.toml)".into(),
                ));
            }
        };
        need(self.crs.is_some(), "crs", &mut missing);
        need(self.ul.is_some(), "ul", &mut missing);
        need(self.res.is_some(), "res", &mut missing);
        need(self.size.is_some(), "size", &mut missing);
        need(self.limits.is_some(), "limits", &mut missing);
        if !missing.is_empty() {
            return Err(missing);
        }
        let crs = Crs::try_from(self.crs.clone().unwrap_or_default())
            .map_err(|e| vec![grid_problem(e)])?;
        let [[r0, r1], [c0, c1]] = self.limits.unwrap_or_default();
        Ok(TileGrid {
            name: self.name.clone().unwrap_or_else(|| "custom".into()),
            crs,
            ul: self.ul.unwrap_or_default(),
            res: self.res.unwrap_or_default(),
            size: self.size.unwrap_or_default(),
            limits: Limits {
                rows: (r0, r1),
                cols: (c0, c1),
            },
        })
    }
}

/// The key and message of a grid error: `grid.res` and what is wrong with it, so that the key is
/// not printed twice ("grid: grid.res: …").
pub(super) fn grid_problem(e: crate::grid::GridError) -> (String, String) {
    match e {
        crate::grid::GridError::Invalid { field, reason } => (format!("grid.{field}"), reason),
        other => ("grid".into(), other.to_string()),
    }
}
