//! Encoding one export piece as a GeoTIFF that GDAL reads: the piece's CRS, pixel scale and
//! tie point, the bands and type of the exported image, the nodata value, and an internally
//! tiled layout, cloud optimized (IFDs first, overviews) when the export asks for it.
//!
//! The pixels are a deterministic picture, not data: every band cycles through eight motifs
//! (ramps, a checkerboard, rings, stripes) that repeat every `tileSize` pixels, so a viewer
//! shows a recognisable pattern per band that continues seamlessly from one piece to the next
//! (piece offsets are multiples of the tile size). A small square in the corner of every tile
//! holds the nodata value, so viewers show it transparent.
//!
//! Because every internal tile of a band holds the same motif, a file stores each motif's
//! compressed tile once per resolution and points every `TileOffsets` entry of the bands that
//! show it at that copy. TIFF allows shared offsets and libtiff/GDAL read them; it keeps a
//! 2048×2048 piece of 48 bands at ~130 KB instead of the 400 MB its pixels would take, which
//! benchmarks and the soak test, exporting thousands of pieces, cannot afford. The compressed
//! motifs are cached for the life of the process, so encoding a piece is mostly building its
//! offset tables (a few milliseconds).
//!
//! The `tiff` crate writes the header, the IFDs and their chain, and compresses (Deflate). It
//! writes a tag's out-of-line values where the file stands when the tag is written, which
//! puts them before the IFD; a cloud-optimized file needs its first IFD at offset 8, so the
//! values and the tile data are laid out here, after the IFDs, and the IFD entries point at them.

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::{Arc, LazyLock, Mutex};

use tiff::Directory;
use tiff::decoder::ifd::Entry;
use tiff::encoder::TiffEncoder;
use tiff::encoder::compression::{CompressionAlgorithm, Deflate, DeflateLevel};
use tiff::tags::{Tag, Type};

/// Why a piece cannot be encoded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum GeoTiffError {
    #[error("TIFF encoding failed: {0}")]
    Tiff(#[from] tiff::TiffError),
    #[error("TIFF encoding failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the GeoTIFF would exceed 4 GiB; the emulator writes classic TIFF only")]
    TooLarge,
}

/// A GeoTIFF sample type: what EE's export writes for the image's band types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum SampleType {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    F32,
    F64,
}

impl SampleType {
    /// The smallest integer type holding `[min, max]`, as EE picks the type of an integer band
    /// from its range; `Int32` for ranges beyond 32 bits.
    pub(crate) fn for_int_range(min: f64, max: f64) -> Self {
        let fits = |lo: f64, hi: f64| min >= lo && max <= hi;
        if fits(0.0, 255.0) {
            SampleType::U8
        } else if fits(-128.0, 127.0) {
            SampleType::I8
        } else if fits(0.0, 65535.0) {
            SampleType::U16
        } else if fits(-32768.0, 32767.0) {
            SampleType::I16
        } else if fits(0.0, 4_294_967_295.0) {
            SampleType::U32
        } else {
            SampleType::I32
        }
    }

    fn bytes(self) -> usize {
        match self {
            SampleType::U8 | SampleType::I8 => 1,
            SampleType::U16 | SampleType::I16 => 2,
            SampleType::U32 | SampleType::I32 | SampleType::F32 => 4,
            SampleType::F64 => 8,
        }
    }

    /// TIFF `SampleFormat`: 1 unsigned, 2 signed, 3 IEEE float.
    fn format(self) -> u16 {
        match self {
            SampleType::U8 | SampleType::U16 | SampleType::U32 => 1,
            SampleType::I8 | SampleType::I16 | SampleType::I32 => 2,
            SampleType::F32 | SampleType::F64 => 3,
        }
    }

    /// The range the motifs span: well inside the type, away from its extremes.
    fn span(self) -> (f64, f64) {
        match self {
            SampleType::U8 => (1.0, 254.0),
            SampleType::I8 => (1.0, 126.0),
            SampleType::F32 | SampleType::F64 => (0.0, 1.0),
            _ => (1.0, 10000.0),
        }
    }

    fn is_float(self) -> bool {
        self.format() == 3
    }

    fn push(self, v: f64, out: &mut Vec<u8>) {
        match self {
            SampleType::U8 => out.push(v as u8),
            SampleType::I8 => out.extend((v as i8).to_le_bytes()),
            SampleType::U16 => out.extend((v as u16).to_le_bytes()),
            SampleType::I16 => out.extend((v as i16).to_le_bytes()),
            SampleType::U32 => out.extend((v as u32).to_le_bytes()),
            SampleType::I32 => out.extend((v as i32).to_le_bytes()),
            SampleType::F32 => out.extend((v as f32).to_le_bytes()),
            SampleType::F64 => out.extend(v.to_le_bytes()),
        }
    }
}

/// One GeoKey: its id and a short, double or ASCII value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum GeoKeyValue {
    Short(u16),
    Double(f64),
    Ascii(String),
}

/// What every GeoTIFF of an export shares; each piece adds its size and offset.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct GeoTiffPlan {
    pub band_names: Vec<String>,
    pub sample: SampleType,
    /// `geoTiffOptions.noData.floatValue`; `None` writes no nodata value.
    pub nodata: Option<f64>,
    /// Side of the internal tiles: `geoTiffOptions.tileSize`.
    pub block: u32,
    pub cloud_optimized: bool,
    /// The affine transform (EE order: scaleX, shearX, translateX, shearY, scaleY,
    /// translateY): the export grid's, and in a [`Raster`] the piece's own (its top-left corner).
    pub transform: [f64; 6],
    pub geokeys: Vec<(u16, GeoKeyValue)>,
}

/// One piece's file: its size and the export's layout, translated to the piece's corner.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Raster {
    pub width: u32,
    pub height: u32,
    pub layout: GeoTiffPlan,
}

/// Encodes `raster` as a GeoTIFF.
pub(crate) fn encode(raster: &Raster) -> Result<Vec<u8>, GeoTiffError> {
    let levels = levels(raster);
    // Every motif compressed once per level: `blocks[level][band]`.
    let blocks: Vec<Vec<Arc<Vec<u8>>>> = (0..levels.len())
        .map(|level| {
            (0..raster.layout.band_names.len())
                .map(|band| motif_block(raster, band, level as u32))
                .collect()
        })
        .collect();

    // The layout: header, IFDs (main first), their out-of-line values, then the tile data from
    // the smallest overview to the full resolution, as GDAL's COG driver orders it.
    let ifds: Vec<Vec<(u16, Field)>> = levels
        .iter()
        .enumerate()
        .map(|(level, &(w, h))| fields(raster, level, w, h))
        .collect();
    // The crate starts every IFD on a 4-byte boundary.
    let mut position = 8u64;
    for fields in &ifds {
        position = position.next_multiple_of(4) + 2 + 12 * fields.len() as u64 + 4;
    }
    let values_start = position;
    let mut values = Vec::new();
    let tiles: Vec<usize> = levels
        .iter()
        .map(|&(w, h)| tiles_per_band(raster, w, h) * raster.layout.band_names.len())
        .collect();
    let mut data_start = values_start + out_of_line_size(&ifds, &tiles);
    data_start += data_start % 2;
    // Where each level's band blocks land in the data area: bands of the same motif share one
    // copy (band `b` starts at the offset of band `b % MOTIF_KINDS`).
    let mut block_offsets = vec![Vec::new(); levels.len()];
    let mut data = Vec::new();
    for level in (0..levels.len()).rev() {
        for (band, block) in blocks[level].iter().enumerate() {
            if band < MOTIF_KINDS {
                block_offsets[level].push(data_start + data.len() as u64);
                data.extend_from_slice(block);
                if data.len() % 2 == 1 {
                    data.push(0);
                }
            } else {
                let shared = block_offsets[level][band % MOTIF_KINDS];
                block_offsets[level].push(shared);
            }
        }
    }
    if data_start + data.len() as u64 > u64::from(u32::MAX) {
        return Err(GeoTiffError::TooLarge);
    }

    let mut file = Cursor::new(Vec::new());
    {
        let mut encoder = TiffEncoder::new(&mut file)?;
        for (level, fields) in ifds.into_iter().enumerate() {
            let (w, h) = levels[level];
            let per_band = tiles_per_band(raster, w, h);
            let mut directory = Directory::empty();
            for (tag, field) in fields {
                let field = match field {
                    Field::TileOffsets => Field::Long(
                        block_offsets[level]
                            .iter()
                            .flat_map(|&o| std::iter::repeat_n(o as u32, per_band))
                            .collect(),
                    ),
                    Field::TileByteCounts => Field::Long(
                        blocks[level]
                            .iter()
                            .flat_map(|b| std::iter::repeat_n(b.len() as u32, per_band))
                            .collect(),
                    ),
                    other => other,
                };
                let entry = field.entry(values_start, &mut values);
                directory.extend([(Tag::from_u16_exhaustive(tag), entry)]);
            }
            let mut ifd = encoder.image_directory()?;
            ifd.extend_from(&directory);
            ifd.finish()?;
        }
    }
    let mut file = file.into_inner();
    debug_assert_eq!(file.len() as u64, values_start, "IFDs are where planned");
    file.extend_from_slice(&values);
    file.resize(data_start as usize, 0);
    file.extend_from_slice(&data);
    Ok(file)
}

fn tiles_per_band(raster: &Raster, w: u32, h: u32) -> usize {
    (w.div_ceil(raster.layout.block) * h.div_ceil(raster.layout.block)) as usize
}

/// The size of every level: the full resolution, then (cloud optimized) halvings until the
/// image fits in one tile, as GDAL's COG driver builds overviews.
fn levels(raster: &Raster) -> Vec<(u32, u32)> {
    let mut levels = vec![(raster.width, raster.height)];
    if raster.layout.cloud_optimized {
        let (mut w, mut h) = (raster.width, raster.height);
        while w > raster.layout.block || h > raster.layout.block {
            (w, h) = (w.div_ceil(2), h.div_ceil(2));
            levels.push((w, h));
        }
    }
    levels
}

/// A field of an IFD; the tile offsets and byte counts are filled in once the layout is known.
#[derive(Debug, Clone)]
enum Field {
    Short(Vec<u16>),
    Long(Vec<u32>),
    Double(Vec<f64>),
    Ascii(String),
    TileOffsets,
    TileByteCounts,
}

impl Field {
    fn bytes(&self) -> (Type, u32, Vec<u8>) {
        match self {
            Field::Short(v) => (
                Type::SHORT,
                v.len() as u32,
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ),
            Field::Long(v) => (
                Type::LONG,
                v.len() as u32,
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ),
            Field::Double(v) => (
                Type::DOUBLE,
                v.len() as u32,
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ),
            Field::Ascii(s) => {
                let mut b = s.as_bytes().to_vec();
                b.push(0);
                (Type::ASCII, b.len() as u32, b)
            }
            Field::TileOffsets | Field::TileByteCounts => {
                unreachable!("tile offsets are resolved before encoding")
            }
        }
    }

    /// The IFD entry: the value itself when it fits in 4 bytes, else an offset into `values`,
    /// which starts at `values_start` in the file.
    fn entry(&self, values_start: u64, values: &mut Vec<u8>) -> Entry {
        let (ty, count, bytes) = self.bytes();
        let mut inline = [0u8; 4];
        if bytes.len() <= 4 {
            inline[..bytes.len()].copy_from_slice(&bytes);
        } else {
            let offset = values_start + values.len() as u64;
            inline = (offset as u32).to_le_bytes();
            values.extend_from_slice(&bytes);
            if values.len() % 2 == 1 {
                values.push(0);
            }
        }
        Entry::new(ty, count, inline)
    }

    /// Bytes this field takes in the values area (word aligned).
    fn out_of_line(&self, tiles: usize) -> u64 {
        let len = match self {
            Field::TileOffsets | Field::TileByteCounts => 4 * tiles,
            other => other.bytes().2.len(),
        } as u64;
        if len <= 4 { 0 } else { len + len % 2 }
    }
}

/// Bytes the out-of-line values of every IFD take; `tiles[i]` is the tile count of IFD `i`.
fn out_of_line_size(ifds: &[Vec<(u16, Field)>], tiles: &[usize]) -> u64 {
    ifds.iter()
        .zip(tiles)
        .map(|(fields, &tiles)| {
            fields
                .iter()
                .map(|(_, f)| f.out_of_line(tiles))
                .sum::<u64>()
        })
        .sum()
}

/// The fields of one IFD, sorted by tag, as TIFF requires.
fn fields(raster: &Raster, level: usize, w: u32, h: u32) -> Vec<(u16, Field)> {
    let bands = raster.layout.band_names.len();
    let bits = (raster.layout.sample.bytes() * 8) as u16;
    let mut f: Vec<(u16, Field)> = Vec::new();
    if level > 0 {
        // NewSubfileType: a reduced-resolution version of the image.
        f.push((254, Field::Long(vec![1])));
    }
    f.extend([
        (256, Field::Long(vec![w])),
        (257, Field::Long(vec![h])),
        (258, Field::Short(vec![bits; bands])),
        // Compression: Adobe Deflate.
        (259, Field::Short(vec![8])),
        // PhotometricInterpretation: min-is-black.
        (262, Field::Short(vec![1])),
        (277, Field::Short(vec![bands as u16])),
        // PlanarConfiguration: separate planes, one tile per band (GDAL's INTERLEAVE=BAND).
        (284, Field::Short(vec![2])),
        (322, Field::Long(vec![raster.layout.block])),
        (323, Field::Long(vec![raster.layout.block])),
        (324, Field::TileOffsets),
        (325, Field::TileByteCounts),
    ]);
    if bands > 1 {
        // ExtraSamples: the bands past the first are unspecified data, not alpha.
        f.push((338, Field::Short(vec![0; bands - 1])));
    }
    f.push((
        339,
        Field::Short(vec![raster.layout.sample.format(); bands]),
    ));
    if level == 0 {
        let [sx, shx, tx, shy, sy, ty] = raster.layout.transform;
        if shx == 0.0 && shy == 0.0 && sy < 0.0 {
            f.push((33550, Field::Double(vec![sx, -sy, 0.0])));
            f.push((33922, Field::Double(vec![0.0, 0.0, 0.0, tx, ty, 0.0])));
        } else {
            f.push((
                34264,
                Field::Double(vec![
                    sx, shx, 0.0, tx, shy, sy, 0.0, ty, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0,
                ]),
            ));
        }
        let (directory, doubles, ascii) = geokey_directory(&raster.layout.geokeys);
        f.push((34735, Field::Short(directory)));
        if !doubles.is_empty() {
            f.push((34736, Field::Double(doubles)));
        }
        if !ascii.is_empty() {
            f.push((34737, Field::Ascii(ascii)));
        }
        f.push((
            42112,
            Field::Ascii(gdal_metadata(&raster.layout.band_names)),
        ));
        if let Some(nodata) = raster.layout.nodata {
            f.push((42113, Field::Ascii(nodata_text(nodata))));
        }
    }
    f.sort_by_key(|(tag, _)| *tag);
    f
}

/// `GeoKeyDirectoryTag` (version 1.1.0) with its double and ASCII parameters.
fn geokey_directory(keys: &[(u16, GeoKeyValue)]) -> (Vec<u16>, Vec<f64>, String) {
    let mut directory = vec![1, 1, 0, keys.len() as u16];
    let (mut doubles, mut ascii) = (Vec::new(), String::new());
    for (id, value) in keys {
        match value {
            GeoKeyValue::Short(v) => directory.extend([*id, 0, 1, *v]),
            GeoKeyValue::Double(v) => {
                directory.extend([*id, 34736, 1, doubles.len() as u16]);
                doubles.push(*v);
            }
            GeoKeyValue::Ascii(s) => {
                // GeoTIFF ends each string with '|' in place of its NUL.
                let text = format!("{s}|");
                directory.extend([*id, 34737, text.len() as u16, ascii.len() as u16]);
                ascii.push_str(&text);
            }
        }
    }
    (directory, doubles, ascii)
}

/// `GDAL_METADATA`: the band names as band descriptions.
fn gdal_metadata(bands: &[String]) -> String {
    let mut xml = String::from("<GDALMetadata>\n");
    for (i, name) in bands.iter().enumerate() {
        let name = name
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;");
        xml.push_str(&format!(
            "  <Item name=\"DESCRIPTION\" sample=\"{i}\" role=\"description\">{name}</Item>\n"
        ));
    }
    xml.push_str("</GDALMetadata>\n");
    xml
}

/// `GDAL_NODATA` is the value as text; integral values without a fraction, as GDAL writes them.
fn nodata_text(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// Compressed motifs, shared by every piece the process writes.
type MotifKey = (u8, SampleType, u32, u32, Option<u64>);
static MOTIFS: LazyLock<Mutex<HashMap<MotifKey, Arc<Vec<u8>>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// The compressed tile of `band` at overview `level`.
fn motif_block(raster: &Raster, band: usize, level: u32) -> Arc<Vec<u8>> {
    let kind = (band % MOTIF_KINDS) as u8;
    let key = (
        kind,
        raster.layout.sample,
        raster.layout.block,
        level,
        raster.layout.nodata.map(f64::to_bits),
    );
    let cached = MOTIFS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&key)
        .cloned();
    if let Some(block) = cached {
        return block;
    }
    let raw = motif_pixels(
        kind,
        raster.layout.sample,
        raster.layout.block,
        level,
        raster.layout.nodata,
    );
    let mut compressed = Vec::new();
    Deflate::with_level(DeflateLevel::Fast)
        .write_to(&mut compressed, &raw)
        .expect("compressing into memory cannot fail");
    let block = Arc::new(compressed);
    MOTIFS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key, block.clone());
    block
}

const MOTIF_KINDS: usize = 8;

/// The raw pixels of one tile of motif `kind` at overview `level` (nearest-neighbour
/// decimation of the full-resolution motif, which repeats every `block` pixels).
fn motif_pixels(
    kind: u8,
    sample: SampleType,
    block: u32,
    level: u32,
    nodata: Option<f64>,
) -> Vec<u8> {
    let n = block as usize;
    let (lo, hi) = sample.span();
    let mut out = Vec::with_capacity(n * n * sample.bytes());
    let hole = (block / 16).max(1);
    for y in 0..block {
        for x in 0..block {
            let (fx, fy) = (
                ((u64::from(x) << level) % u64::from(block)) as u32,
                ((u64::from(y) << level) % u64::from(block)) as u32,
            );
            let value = match nodata {
                Some(nd) if fx < hole && fy < hole => nd,
                _ => {
                    let mut v = lo + motif(kind, fx, fy, block) * (hi - lo);
                    if !sample.is_float() {
                        v = v.round();
                    }
                    if Some(v) == nodata {
                        v = if v < hi { v + 1.0 } else { v - 1.0 };
                    }
                    v
                }
            };
            sample.push(value, &mut out);
        }
    }
    out
}

/// Motif `kind` at (x, y) of a `block`-sized tile, in [0, 1].
fn motif(kind: u8, x: u32, y: u32, block: u32) -> f64 {
    let s = f64::from(block);
    let (u, v) = (f64::from(x) / s, f64::from(y) / s);
    let cells = |c: u32| (x * c / block, y * c / block);
    match kind {
        // Ramps: left to right, top to bottom, along the diagonal.
        0 => u,
        1 => v,
        2 => (u + v) / 2.0,
        // A checkerboard of 8×8 squares.
        3 => {
            let (cx, cy) = cells(8);
            ((cx + cy) % 2) as f64
        }
        // Eight rings around the tile's centre (two levels: smooth rings compress poorly).
        4 => {
            let d = ((u - 0.5).powi(2) + (v - 0.5).powi(2)).sqrt();
            ((d * 16.0) as u32 % 2) as f64
        }
        // Sixteen vertical stripes.
        5 => (cells(16).0 % 2) as f64,
        // Four horizontal steps.
        6 => f64::from(cells(4).1) / 3.0,
        // Diagonal stripes.
        _ => (((x + y) * 8 / block) % 2) as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raster(width: u32, height: u32, cloud_optimized: bool) -> Raster {
        Raster {
            width,
            height,
            layout: GeoTiffPlan {
                band_names: vec!["blue".into(), "green".into(), "red".into()],
                sample: SampleType::U16,
                nodata: Some(0.0),
                block: 256,
                cloud_optimized,
                transform: [30.0, 0.0, 1000.0, 0.0, -30.0, 2000.0],
                geokeys: vec![
                    (1024, GeoKeyValue::Short(1)),
                    (1025, GeoKeyValue::Short(1)),
                    (3072, GeoKeyValue::Short(32610)),
                ],
            },
        }
    }

    #[test]
    fn files_are_little_endian_tiffs_with_the_first_ifd_at_offset_8() {
        let file = encode(&raster(600, 300, true)).unwrap();
        assert_eq!(&file[..8], b"II*\0\x08\0\0\0");
        assert_eq!(file, encode(&raster(600, 300, true)).unwrap());
    }

    #[test]
    fn overviews_halve_until_one_tile_holds_the_image() {
        assert_eq!(levels(&raster(600, 300, false)), vec![(600, 300)]);
        assert_eq!(
            levels(&raster(1024, 1000, true)),
            vec![(1024, 1000), (512, 500), (256, 250)]
        );
        assert_eq!(levels(&raster(200, 100, true)), vec![(200, 100)]);
    }

    #[test]
    fn integer_types_are_the_smallest_that_hold_the_range() {
        assert_eq!(SampleType::for_int_range(0.0, 255.0), SampleType::U8);
        assert_eq!(SampleType::for_int_range(0.0, 65535.0), SampleType::U16);
        assert_eq!(SampleType::for_int_range(-1.0, 255.0), SampleType::I16);
        assert_eq!(SampleType::for_int_range(-1.0, 70000.0), SampleType::I32);
    }

    #[test]
    fn every_motif_compresses_to_a_few_kilobytes() {
        for kind in 0..MOTIF_KINDS {
            let mut raster = raster(256, 256, false);
            raster.layout.band_names = (0..MOTIF_KINDS).map(|b| format!("b{b}")).collect();
            let block = motif_block(&raster, kind, 0);
            assert!(block.len() < 8192, "motif {kind}: {} bytes", block.len());
        }
    }

    #[test]
    fn motifs_avoid_nodata_outside_the_hole_and_hold_it_inside() {
        let px = motif_pixels(0, SampleType::U8, 256, 0, Some(1.0));
        let at = |x: usize, y: usize| px[y * 256 + x];
        assert_eq!(at(0, 0), 1);
        assert_eq!(at(15, 15), 1);
        assert_ne!(at(0, 16), 1);
        assert!(px.iter().enumerate().all(|(i, &v)| {
            let (x, y) = (i % 256, i / 256);
            (x < 16 && y < 16) == (v == 1)
        }));
    }
}
