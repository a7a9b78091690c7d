//! The bodies of the fuzz targets in `fuzz/`, as plain functions.
//!
//! Each `fuzz/fuzz_targets/NAME.rs` calls the function of the same name
//! here, and `tests/fuzz_regressions.rs` runs every kept crash input
//! (`fuzz/regressions/NAME/`) and the seed corpus (`fuzz/corpus/NAME/`)
//! through the same functions, so a regression test checks exactly what the
//! fuzzer checked. A body returns normally when the input is handled as the
//! code promises (refused with an error, or accepted and usable) and panics
//! otherwise: a panic inside Cohort or a library, or a failed assertion of a
//! property stated below.
//!
//! - [`segment`]: the segment parser and checker against a small schema with
//!   a trait of every type, events with properties and saved segments; what
//!   checks is in normal form and evaluates alike by bitmaps and row by row
//!   on a small shard.
//! - [`message`]: [`Message::parse`] on the text agrees with
//!   [`Message::from_json`] on the parsed value, also for the value written
//!   back as text (what the HTTP door hands to the pipeline).
//! - [`shard_snapshot`], [`catalog_snapshot`], [`directory_image`]: the
//!   loaders of a shard snapshot, a catalog snapshot and an identity
//!   directory image; what loads passes its own validation and can be
//!   queried.
//! - [`raft_log`]: a raft-engine log directory damaged by a short program
//!   (flip, set, cut, remove, insert, zero bytes, delete files), opened by
//!   [`LogStore`] and read as a node reads it on start, through raft-rs.
//!
//! The snapshot bodies take a first byte that selects a mode: `0` uses the
//! rest as it is, anything else first recomputes the lengths and checksums
//! the format carries, so that mutations reach the decoder behind them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::Value as Json;

use crate::cluster::catalog::CatalogMachine;
use crate::identity::directory::Directory;
use crate::model::message::Message;
use crate::model::{IdentifierKind, Schema, SchemaLimits, TraitType, Value};
use crate::replication::driver::StateMachine;
use crate::replication::log_check;
use crate::replication::shard_machine::ShardMachine;
use crate::replication::storage::LogStore;
use crate::segment::{check, check_save, is_normal, normalize, parse, parse_filter, CheckContext, Cond};
use crate::shard::{Command, EventWrite, ProfileWrite, Shard};

/// The `now` of every check: 2026-03-15T12:00:00Z.
pub const NOW_MS: i64 = 1_773_576_000_000;

/// When the server received a fuzzed message: 2026-03-15T12:00:00Z.
const RECEIVED_MS: i64 = NOW_MS;

const DAY_MS: i64 = 86_400_000;

// ----- scratch directories ----------------------------------------------------

/// A directory of its own under the system's temporary directory, removed
/// when dropped. Loaders read files, so the snapshot and log bodies write
/// their input there first.
pub struct Scratch {
    path: PathBuf,
}

impl Scratch {
    /// Creates a fresh, empty directory whose name carries `what`, the
    /// process id and a counter.
    pub fn new(what: &str) -> std::io::Result<Scratch> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("cohort-fuzz-{what}-{}-{n}", std::process::id()));
        if path.exists() {
            std::fs::remove_dir_all(&path)?;
        }
        std::fs::create_dir_all(&path)?;
        Ok(Scratch { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

// ----- the fixture: schema, saved segments, a small shard ---------------------

/// The schema, saved segments and shard that segment inputs are checked
/// and evaluated against.
pub struct Fixture {
    /// A trait of every type (and a dotted name), three events with
    /// properties of every type, one event without.
    pub schema: Schema,
    /// Saved segments: plain, nested two deep, and a cycle that
    /// `check_save` would refuse but an old catalog might hold.
    pub segments: BTreeMap<String, String>,
    /// Twenty profiles with those traits and events, one merged away.
    pub shard: Shard,
}

/// The fixture, built once.
pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(build_fixture)
}

fn build_fixture() -> Fixture {
    let mut schema = Schema::new();
    let traits = [
        ("country", TraitType::Keyword),
        ("plan", TraitType::Keyword),
        ("address.city", TraitType::Keyword),
        ("email", TraitType::Text),
        ("age", TraitType::Number),
        ("score", TraitType::Number),
        ("vip", TraitType::Bool),
        ("signup", TraitType::Timestamp),
        ("tags", TraitType::List),
        ("groups", TraitType::List),
    ];
    for (name, ty) in traits {
        // The names are fixed and none is reserved.
        let _ = schema.declare_trait(name, ty);
    }
    let events: [(&str, &[(&str, TraitType)]); 4] = [
        (
            "purchase",
            &[
                ("amount", TraitType::Number),
                ("category", TraitType::Keyword),
                ("gift", TraitType::Bool),
                ("sku", TraitType::Text),
                ("at", TraitType::Timestamp),
                ("labels", TraitType::List),
            ],
        ),
        ("page", &[("path", TraitType::Keyword), ("name", TraitType::Keyword)]),
        ("email_open", &[("campaign", TraitType::Keyword)]),
        ("app_open", &[]),
    ];
    for (event, props) in events {
        schema.declare_event(event);
        for (name, ty) in props {
            let _ = schema.declare_property(event, name, *ty);
        }
    }
    let segments: BTreeMap<String, String> = [
        ("buyers", r#"DID "purchase" WHERE amount > 100 AT LEAST 2 TIMES IN LAST 90 DAYS"#),
        ("fr_buyers", r#"IN SEGMENT "buyers" AND country = "FR""#),
        ("vip_or_fr", r#"vip = true OR IN SEGMENT "fr_buyers""#),
        ("loop_a", r#"IN SEGMENT "loop_b" OR age > 3"#),
        ("loop_b", r#"IN SEGMENT "loop_a""#),
    ]
    .into_iter()
    .map(|(n, t)| (n.to_string(), t.to_string()))
    .collect();

    let countries = ["FR", "DE", "US", "BE"];
    let plans = ["free", "pro", "team"];
    let mut commands = Vec::new();
    for p in 1..=20u64 {
        let i = p as usize;
        let time_ms = NOW_MS - (p as i64) * DAY_MS;
        let mut tags = vec![format!("t{}", i % 3)];
        if i % 4 == 0 {
            tags.push("vip".to_string());
        }
        let mut traits = vec![
            ("country".to_string(), Some(Value::Keyword(countries[i % 4].to_string()))),
            ("plan".to_string(), Some(Value::Keyword(plans[i % 3].to_string()))),
            ("email".to_string(), Some(Value::Text(format!("p{p}@example.com")))),
            ("age".to_string(), Some(Value::Number((18 + i * 3) as f64))),
            ("vip".to_string(), Some(Value::Bool(i % 5 == 0))),
            ("signup".to_string(), Some(Value::Timestamp(time_ms - 400 * DAY_MS))),
            ("tags".to_string(), Some(Value::List(tags))),
        ];
        if i % 2 == 0 {
            traits.push(("address.city".to_string(), Some(Value::Keyword("Lyon".to_string()))));
            traits.push(("score".to_string(), Some(Value::Number(i as f64 / 4.0))));
        }
        let mut identifiers = vec![(IdentifierKind::AnonymousId, format!("a{p}"))];
        if i % 3 != 0 {
            identifiers.push((IdentifierKind::UserId, format!("u{p}")));
        }
        commands.push(Command::Write(ProfileWrite {
            profile: p,
            time_ms,
            seq: p,
            identifiers,
            traits,
            add_to_lists: if i % 6 == 0 {
                vec![("groups".to_string(), vec!["acme".to_string()])]
            } else {
                Vec::new()
            },
            event: None,
        }));
        for k in 0..(i % 4) {
            commands.push(Command::Write(ProfileWrite {
                profile: p,
                time_ms: time_ms - (k as i64) * 10 * DAY_MS,
                seq: 100 * p + k as u64,
                event: Some(EventWrite {
                    name: "purchase".to_string(),
                    properties: vec![
                        ("amount".to_string(), Value::Number((i * 40 + k * 7) as f64)),
                        ("category".to_string(), Value::Keyword(["shoes", "books"][k % 2].to_string())),
                        ("gift".to_string(), Value::Bool(k == 1)),
                        ("sku".to_string(), Value::Text(format!("sku-{i}-{k}"))),
                        ("at".to_string(), Value::Timestamp(time_ms)),
                        ("labels".to_string(), Value::List(vec!["sale".to_string()])),
                    ],
                }),
                ..ProfileWrite::default()
            }));
        }
        let name = if i % 2 == 0 { "page" } else { "app_open" };
        let properties = if name == "page" {
            vec![("path".to_string(), Value::Keyword("/pricing".to_string()))]
        } else {
            Vec::new()
        };
        commands.push(Command::Write(ProfileWrite {
            profile: p,
            time_ms: NOW_MS - (p as i64) * 3_600_000,
            seq: 10_000 + p,
            event: Some(EventWrite { name: name.to_string(), properties }),
            ..ProfileWrite::default()
        }));
    }
    commands.push(Command::Merge { into: 2, from: 7 });
    let mut shard = Shard::new(0);
    shard.apply(&commands);
    shard.flush_events();
    Fixture { schema, segments, shard }
}

/// Evaluates `cond` on `shard` by bitmaps (count, members) and row by row,
/// and checks that they agree (only when `agree`: a shard that fails its
/// own validation may answer differently each way, but must not panic).
fn evaluate(shard: &Shard, cond: &Cond, what: &str, agree: bool) {
    let count = shard.count(cond);
    let members = shard.members(cond, None, usize::MAX);
    let mut member = members.iter().peekable();
    if !agree {
        for row in shard.universe.iter() {
            let _ = shard.row_matches(row, cond);
        }
        return;
    }
    assert_eq!(count, members.len() as u64, "{what}: count and members disagree for {cond:?}");
    assert!(count <= shard.len(), "{what}: {count} matches of {} profiles", shard.len());
    for row in shard.universe.iter() {
        let listed = member.next_if(|&&m| m == row).is_some();
        assert_eq!(
            shard.row_matches(row, cond),
            listed,
            "{what}: row {row} is {} the members but row_matches says otherwise for {cond:?}",
            if listed { "among" } else { "not among" }
        );
    }
    assert!(member.next().is_none(), "{what}: a member is not a live row for {cond:?}");
}

// ----- targets ----------------------------------------------------------------

/// Fuzz target `segment`: parses the input (UTF-8 text) as a segment and as
/// a `WHERE` filter; what parses is checked against the fixture, also as a
/// saved segment under a new name and under an existing one. A checked
/// condition must be in normal form, stay the same when normalised again,
/// and evaluate alike by bitmaps and row by row.
pub fn segment(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let f = fixture();
    let ctx = CheckContext { schema: &f.schema, catalog: &f.segments, now_ms: NOW_MS };
    let _ = parse_filter(text);
    let Ok(expr) = parse(text) else { return };
    let checked = check(&expr, &ctx);
    for name in ["new_segment", "buyers", "loop_a"] {
        let saved = check_save(name, text, &ctx);
        if name == "new_segment" && !crate::segment::references(&expr).contains(name) {
            // A new name that the text does not refer to changes nothing.
            assert_eq!(saved.is_ok(), checked.is_ok(), "check and check_save disagree on {text:?}");
        }
    }
    let Ok(cond) = checked else { return };
    assert!(is_normal(&cond), "check returned a condition not in normal form for {text:?}: {cond:?}");
    assert_eq!(normalize(cond.clone()), cond, "normalising again changed the condition of {text:?}");
    evaluate(&f.shard, &cond, text, true);
}

/// Fuzz target `message`: reads the input (UTF-8 text) with
/// [`Message::parse`] and compares with [`Message::from_json`] on the value
/// serde_json parses from it, outcome and error message alike, and the
/// `messageId` returned with it (text serde_json refuses must be refused as
/// not JSON). Then the same for the value written back
/// as text, which is what the HTTP door hands on. An accepted message is
/// typed against a copy of the fixture's schema.
pub fn message(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (got, id) = Message::parse(text, RECEIVED_MS);
    let json = match serde_json::from_str::<Json>(text) {
        Ok(json) => json,
        Err(e) => {
            // Refused alike; the position quoted may differ by a column, as
            // serde_json reports a bad string in a skipped field (parsed as
            // `IgnoredAny`) one character earlier than in a built value.
            assert!(
                matches!(&got, Err(m) if m.starts_with("not JSON: ")),
                "parse accepted text serde_json refuses ({e}): {text:?}"
            );
            return;
        }
    };
    let want = Message::from_json(&json, RECEIVED_MS).map_err(|e| e.to_string());
    assert_eq!(got, want, "Message::parse and Message::from_json disagree on {text:?}");
    let want_id = json.get("messageId").and_then(Json::as_str).map(str::to_string);
    assert_eq!(id, want_id, "Message::parse returned another messageId for {text:?}");
    let written = json.to_string();
    let (again, again_id) = Message::parse(&written, RECEIVED_MS);
    assert_eq!(again, want, "Message::parse of the value written back disagrees: {written:?}");
    assert_eq!(again_id, want_id, "messageId of the value written back: {written:?}");
    if let Ok(m) = got {
        // Under the default caps, and under caps so small that new names
        // meet them.
        let tiny = SchemaLimits {
            max_traits: 8,
            max_events: 2,
            max_properties_per_event: 2,
            max_properties: 3,
            max_name_bytes: 6,
        };
        for limits in [SchemaLimits::default(), tiny] {
            let mut schema = fixture().schema.clone();
            let _ = m.typed(&mut schema, &limits);
        }
    }
}

/// Splits a snapshot input into its mode byte and the file's bytes: mode
/// `0` keeps the bytes, anything else asks for lengths and checksums to be
/// recomputed.
fn mode_and_bytes(data: &[u8]) -> Option<(bool, Vec<u8>)> {
    let (&mode, rest) = data.split_first()?;
    Some((mode != 0, rest.to_vec()))
}

/// Fuzz target `shard_snapshot`: writes the input as `shard-000.snap` and
/// opens it as a node does ([`ShardMachine::open`]: the snapshot and the
/// replication layer's extra section). A shard that loads must answer
/// profile reads and conditions built from its own schema without
/// panicking; when its checksums were not recomputed it must also pass
/// [`Shard::validate`], give every live profile back, and evaluate alike by
/// bitmaps and row by row.
pub fn shard_snapshot(scratch: &Path, data: &[u8]) {
    let Some((fix, mut bytes)) = mode_and_bytes(data) else { return };
    if fix {
        fix_shard_snapshot(&mut bytes);
    }
    let path = scratch.join("shard-000.snap");
    std::fs::write(&path, &bytes).expect("writing the scratch snapshot");
    let Ok(machine) = ShardMachine::open(scratch, 0) else { return };
    let state = machine.read_state();
    let shard = &state.shard;
    let consistent = match shard.validate() {
        Ok(()) => true,
        // Checksums catch damage; a file whose checksums were recomputed
        // can hold structures that disagree (a bitmap and the codes it
        // indexes) without any bound being broken. The loader checks only
        // what it uses as an index, so such a shard loads.
        Err(_) if fix => false,
        Err(e) => panic!("a shard snapshot with valid checksums loaded but fails validation: {e}"),
    };
    for row in shard.universe.iter().take(1_000) {
        let profile = shard.profile_of(row);
        let image = shard.read_profile(profile);
        if consistent {
            assert_eq!(shard.row_of(profile), Some(row), "live row {row} does not map back");
            assert!(image.is_some(), "live profile {profile} cannot be read");
        }
    }
    let schema = shard.schema();
    let catalog = BTreeMap::<String, String>::new();
    let ctx = CheckContext { schema: &schema, catalog: &catalog, now_ms: NOW_MS };
    for text in conditions_for(&schema).iter().take(64) {
        if let Ok(expr) = parse(text) {
            if let Ok(cond) = check(&expr, &ctx) {
                evaluate(shard, &cond, text, consistent);
            }
        }
        if let Some(name) = text.strip_prefix("breakdown ") {
            let _ = shard.breakdown(&Cond::All, name);
        }
    }
}

/// Segment texts that touch every trait and event of `schema` (names in
/// backticks), and `breakdown NAME` lines for the traits.
fn conditions_for(schema: &Schema) -> Vec<String> {
    let quote = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    let mut out = vec![
        "ALL".to_string(),
        "user_id EXISTS".to_string(),
        "anonymous_id EXISTS".to_string(),
        r#"first_seen > "2020-01-01T00:00:00Z""#.to_string(),
        "last_seen > NOW - 30 DAYS".to_string(),
    ];
    for (name, ty) in schema.traits() {
        if name.contains('`') {
            continue;
        }
        let n = format!("`{name}`");
        out.push(format!("{n} EXISTS"));
        out.push(format!("breakdown {name}"));
        out.push(match ty {
            TraitType::Keyword => format!(r#"{n} IN ("FR", "pro", "Lyon") OR {n} != "x""#),
            TraitType::Text => format!(r#"{n} = "p2@example.com""#),
            TraitType::Number => format!("{n} BETWEEN 1 AND 40 OR {n} < 0.5"),
            TraitType::Bool => format!("{n} = true OR {n} = false"),
            TraitType::Timestamp => format!(r#"{n} > "2024-01-01T00:00:00Z" AND {n} < NOW"#),
            TraitType::List => format!(r#"{n} CONTAINS "vip" OR {n} CONTAINS "t1""#),
        });
    }
    for (event, props) in schema.events() {
        let e = quote(event);
        out.push(format!(r#"DID "{e}""#));
        out.push(format!(r#"DID "{e}" AT LEAST 2 TIMES IN LAST 30 DAYS"#));
        out.push(format!(r#"NOT DID "{e}" IN LAST 7 DAYS"#));
        for (name, ty) in props {
            if name.contains('`') {
                continue;
            }
            let n = format!("`{name}`");
            let test = match ty {
                TraitType::Keyword | TraitType::Text => format!(r#"{n} = "shoes""#),
                TraitType::Number => format!("{n} > 50"),
                TraitType::Bool => format!("{n} = true"),
                TraitType::Timestamp => format!(r#"{n} > "2025-01-01T00:00:00Z""#),
                TraitType::List => format!(r#"{n} CONTAINS "sale""#),
            };
            out.push(format!(r#"DID "{e}" WHERE {test} AT MOST 3 TIMES"#));
        }
    }
    out
}

/// Recomputes what a shard snapshot checks before decoding: the header's
/// CRC, each section's payload CRC (lengths that run past the end are cut
/// to it) and the footer's file length.
fn fix_shard_snapshot(bytes: &mut [u8]) {
    if bytes.len() < 24 + 16 {
        return;
    }
    let crc = crc32fast::hash(&bytes[..20]);
    bytes[20..24].copy_from_slice(&crc.to_le_bytes());
    let sections = u32::from_le_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]);
    let end = bytes.len() - 16;
    let mut pos = 24;
    for _ in 0..sections.min(100_000) {
        // kind u32, name_len u32, name, payload_len u64, payload_crc u32.
        if pos + 8 > end {
            break;
        }
        let name_len = u32::from_le_bytes([bytes[pos + 4], bytes[pos + 5], bytes[pos + 6], bytes[pos + 7]]);
        let Some(len_at) = (pos + 8).checked_add(name_len as usize).filter(|&at| at + 12 <= end) else {
            break;
        };
        let mut len = [0u8; 8];
        len.copy_from_slice(&bytes[len_at..len_at + 8]);
        let payload_at = len_at + 12;
        let payload_len = (u64::from_le_bytes(len) as usize).min(end - payload_at);
        bytes[len_at..len_at + 8].copy_from_slice(&(payload_len as u64).to_le_bytes());
        let crc = crc32fast::hash(&bytes[payload_at..payload_at + payload_len]);
        bytes[len_at + 8..len_at + 12].copy_from_slice(&crc.to_le_bytes());
        pos = payload_at + payload_len;
    }
    let total = bytes.len() as u64;
    let n = bytes.len();
    bytes[n - 8..].copy_from_slice(&total.to_le_bytes());
}

/// Fuzz target `catalog_snapshot`: writes the input as `catalog.snap` and
/// opens it as a node with 2 shards does ([`CatalogMachine::open`]). A
/// catalog that loads must hold a directory that passes
/// [`Directory::validate`] and saved segments that can be checked against
/// its own schema and catalog (an error is fine, a panic is not).
pub fn catalog_snapshot(scratch: &Path, data: &[u8]) {
    let Some((fix, mut bytes)) = mode_and_bytes(data) else { return };
    if fix {
        fix_catalog_snapshot(&mut bytes);
    }
    std::fs::write(scratch.join("catalog.snap"), &bytes).expect("writing the scratch snapshot");
    let Ok(machine) = CatalogMachine::open(scratch, 2, 24) else { return };
    let state = machine.state.read();
    if let Err(e) = state.directory.validate() {
        panic!("a catalog snapshot loaded but its directory fails validation: {e}");
    }
    for address in ["u1", "user_id:u2", "anonymous_id:a3", "a4"] {
        let _ = state.lookup(address);
    }
    let _ = state.heap_bytes();
    let ctx = CheckContext { schema: &state.schema, catalog: &*state, now_ms: NOW_MS };
    for (name, saved) in state.segments.iter().take(64) {
        let _ = check_save(name, &saved.expression, &ctx);
    }
    let _ = machine.applied_index();
}

/// Recomputes a catalog snapshot's header (body length cut to the file,
/// directory length the rest, both checksums), and the embedded directory
/// image's length and checksum.
fn fix_catalog_snapshot(bytes: &mut [u8]) {
    if bytes.len() < 32 {
        return;
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes[8..16]);
    let body_len = (u64::from_le_bytes(len) as usize).min(bytes.len() - 32);
    let dir_len = bytes.len() - 32 - body_len;
    let (header, rest) = bytes.split_at_mut(32);
    let (body, dir) = rest.split_at_mut(body_len);
    fix_directory_image(dir);
    header[8..16].copy_from_slice(&(body_len as u64).to_le_bytes());
    header[16..20].copy_from_slice(&crc32fast::hash(body).to_le_bytes());
    header[20..28].copy_from_slice(&(dir_len as u64).to_le_bytes());
    header[28..32].copy_from_slice(&crc32fast::hash(dir).to_le_bytes());
}

/// Recomputes a directory image's total length (bytes 8..16) and its
/// trailing CRC-32.
fn fix_directory_image(bytes: &mut [u8]) {
    if bytes.len() < 20 {
        return;
    }
    let n = bytes.len();
    bytes[8..16].copy_from_slice(&(n as u64).to_le_bytes());
    let crc = crc32fast::hash(&bytes[..n - 4]);
    bytes[n - 4..].copy_from_slice(&crc.to_le_bytes());
}

/// Fuzz target `directory_image`: decodes the input as an identity directory
/// image ([`Directory::decode`]). A directory that decodes must pass
/// [`Directory::validate`], encode to bytes that decode to a directory that
/// encodes the same, and resolve new and known identifiers without panicking.
pub fn directory_image(data: &[u8]) {
    let Some((fix, mut bytes)) = mode_and_bytes(data) else { return };
    if fix {
        fix_directory_image(&mut bytes);
    }
    let Ok(mut dir) = Directory::decode(&bytes) else { return };
    if let Err(e) = dir.validate() {
        panic!("a directory image decoded but fails validation: {e}");
    }
    let encoded = dir.encode();
    let again = Directory::decode(&encoded).expect("the encoding of a decoded directory decodes");
    assert_eq!(again.encode(), encoded, "a directory's encoding changed over a round trip");
    assert_eq!((again.profiles(), again.identifiers()), (dir.profiles(), dir.identifiers()));
    let _ = dir.lookup(IdentifierKind::UserId, "u1");
    let _ = dir.lookup(IdentifierKind::AnonymousId, "a1");
    for ids in [
        vec![(IdentifierKind::UserId, "u1".to_string()), (IdentifierKind::AnonymousId, "a2".to_string())],
        vec![
            (IdentifierKind::AnonymousId, "a1".to_string()),
            (IdentifierKind::AnonymousId, "a3".to_string()),
        ],
        vec![(IdentifierKind::UserId, "fuzz-new".to_string())],
    ] {
        if dir.resolve(&ids).is_err() {
            return;
        }
    }
    if let Err(e) = dir.validate() {
        panic!("a decoded directory fails validation after resolving: {e}");
    }
}

/// The files of a raft-engine log directory, read once: the undamaged log
/// that [`raft_log`] damages.
pub struct LogImage {
    /// File names and contents, by name (the lock file left out).
    pub files: Vec<(String, Vec<u8>)>,
}

impl LogImage {
    /// Reads every regular file of `dir` except raft-engine's `LOCK`.
    pub fn load(dir: &Path) -> std::io::Result<LogImage> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.file_type()?.is_file() && name != "LOCK" {
                files.push((name, std::fs::read(entry.path())?));
            }
        }
        files.sort();
        Ok(LogImage { files })
    }
}

/// The most damage operations one input applies.
const MAX_DAMAGE_OPS: usize = 16;

/// Applies the damage program `data` to copies of `base`'s files. Each
/// operation is 7 bytes: kind, file, offset (`u32`, little-endian, taken
/// modulo the file's length) and a value byte.
fn damage(base: &LogImage, data: &[u8]) -> Vec<(String, Option<Vec<u8>>)> {
    let mut files: Vec<(String, Option<Vec<u8>>)> =
        base.files.iter().map(|(n, b)| (n.clone(), Some(b.clone()))).collect();
    if files.is_empty() {
        return files;
    }
    for op in data.chunks_exact(7).take(MAX_DAMAGE_OPS) {
        let file = op[1] as usize % files.len();
        let offset = u32::from_le_bytes([op[2], op[3], op[4], op[5]]) as usize;
        let value = op[6];
        let Some(bytes) = files[file].1.as_mut() else { continue };
        let len = bytes.len();
        let at = if len == 0 { 0 } else { offset % len };
        match op[0] % 8 {
            0 if len > 0 => bytes[at] ^= value.max(1),
            1 if len > 0 => bytes[at] = value,
            2 => bytes.truncate(offset % (len + 1)),
            3 if len > 0 => {
                let end = (at + value as usize + 1).min(len);
                bytes.drain(at..end);
            }
            4 => {
                let at = offset % (len + 1);
                bytes.splice(at..at, std::iter::repeat_n(value, (value as usize % 16) + 1));
            }
            5 => files[file].1 = None,
            6 if len > 0 => {
                let end = (at + (value as usize + 1) * 16).min(len);
                bytes[at..end].fill(0);
            }
            7 if len > 0 => {
                // A run of the file written again at its end, as a
                // replayed write would leave it.
                let end = (at + (value as usize + 1) * 8).min(len);
                let run = bytes[at..end].to_vec();
                bytes.extend_from_slice(&run);
            }
            _ => {}
        }
    }
    files
}

/// Fuzz target `raft_log`: damages a copy of `base` by the program `data`
/// (see [`damage`]), writes it under `scratch` and opens it with
/// [`LogStore::open`] after the read-only check a node runs first
/// ([`log_check::check_dir`]; damage it finds ends the input, as it stops
/// the node). When it opens, every group is read as a node reads
/// it on start: its stored state, every entry and term of its log, then a
/// raft-rs node over it and the committed entries of its first `Ready`
/// (as `Driver::start` does, also when an entry could not be read). Any
/// step may refuse with an error; none may panic.
///
/// Returns only once the threads the engine started have exited:
/// raft-engine recovers on a rayon pool, and dropping a rayon pool does not
/// wait for its workers (rayon-rs/rayon#688), so LeakSanitizer, which
/// checks right after each input, would otherwise now and then find a
/// worker's buffers held by no live thread and report them as leaked.
pub fn raft_log(base: &LogImage, scratch: &Path, data: &[u8]) {
    let threads = thread_count();
    open_damaged_log(base, scratch, data);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while thread_count() > threads && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// The threads of this process (`Threads:` of `/proc/self/status`; 0 where
/// it cannot be read, so that nothing waits).
fn thread_count() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Threads:").map(|n| n.trim().parse().ok())))
        .flatten()
        .unwrap_or(0)
}

fn open_damaged_log(base: &LogImage, scratch: &Path, data: &[u8]) {
    use raft::Storage as _;
    let dir = scratch.join("raft");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).expect("clearing the scratch log");
    }
    std::fs::create_dir_all(&dir).expect("creating the scratch log");
    for (name, bytes) in damage(base, data) {
        if let Some(bytes) = bytes {
            std::fs::write(dir.join(name), bytes).expect("writing the scratch log");
        }
    }
    // As `Node::open`: the log files are checked before raft-engine opens
    // them, and damage other than a torn tail stops the start there.
    let check = log_check::check_dir(&dir).expect("listing the scratch log");
    if !check.damage.is_empty() {
        return;
    }
    for cut in &check.cuts {
        cut.apply().expect("cutting the scratch log's torn tail");
    }
    let Ok(store) = LogStore::open(&dir) else { return };
    let mut groups = Vec::new();
    for id in store.groups() {
        let Ok(group) = store.group(id) else { return };
        // As `Driver::start`: a group with an entry the engine cannot read
        // does not start.
        if group.check_readable().is_err() {
            return;
        }
        let (Ok(first), Ok(last)) = (group.first_index(), group.last_index()) else { return };
        // The undamaged log holds a few dozen entries: a longer one is not
        // read whole.
        if last.saturating_sub(first) > 100_000 {
            return;
        }
        // An entry that cannot be read is an error here, and the node must
        // not start on it; the raft-rs step below runs in any case, so that
        // a damage the check missed shows as raft-rs's panic.
        if last >= first {
            let ctx = raft::GetEntriesContext::empty(false);
            if let Ok(entries) = group.entries(first, last + 1, None, ctx) {
                assert_eq!(entries.len() as u64, last + 1 - first, "group {id}: entries {first}..={last}");
            }
        }
        for index in first.saturating_sub(1)..=last {
            let _ = group.term(index);
        }
        groups.push(group);
    }
    // What `Driver::start` does with each group: a raft-rs node over it,
    // whose first `Ready` carries the committed entries to replay.
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    for group in groups {
        let config = raft::Config {
            id: 1,
            applied: group.snapshot_meta().index,
            election_tick: 10,
            heartbeat_tick: 1,
            pre_vote: true,
            check_quorum: true,
            ..raft::Config::default()
        };
        if config.validate().is_err() {
            continue;
        }
        let Ok(mut node) = raft::RawNode::new(&config, group, &logger) else { continue };
        if node.has_ready() {
            let ready = node.ready();
            let _ = ready.committed_entries().len();
        }
    }
}
