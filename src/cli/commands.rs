//! The commands other than `load`: running a node (`serve`, `demo`) and the
//! clients of its Query, Segments and Admin services.
//!
//! Each client command makes its calls, then prints either tables (the
//! default) or one JSON document (`--json`) whose field names are the
//! proto's. Values that travel as JSON text (trait values, breakdown values,
//! event properties) are printed plainly in tables and parsed into real JSON
//! values in `--json` output.

#![allow(clippy::print_stdout)]

use std::path::Path;
use std::time::Instant;

use anyhow::Context as _;
use serde_json::{json, Value as Json};

use super::output::{self, Column, Out, Table};
use super::{Access, DemoArgs, MembersArgs, Node, SegmentCommand, ServeArgs};
use crate::node::NodeConfig;
use crate::proto::v1 as pb;

// ------------------------------------------------------------ serve, demo

/// The node's settings: the TOML file's (its top-level keys are
/// [`NodeConfig`]'s fields; unknown keys are refused), or the defaults, then
/// the flags given on the command line.
pub fn node_config(args: &ServeArgs) -> anyhow::Result<NodeConfig> {
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the configuration {}", path.display()))?;
            parse_config(&text).with_context(|| format!("{} is not a valid configuration", path.display()))?
        }
        None => NodeConfig::default(),
    };
    if let Some(dir) = &args.data_dir {
        config.data_dir = dir.clone();
    }
    if let Some(addr) = &args.grpc_addr {
        config.grpc_addr = addr.clone();
    }
    if let Some(addr) = &args.http_addr {
        config.http_addr = addr.clone();
    }
    if let Some(shards) = args.shards {
        config.shards = shards;
    }
    if let Some(cert) = &args.tls_cert {
        config.tls_cert = Some(cert.clone());
    }
    if let Some(key) = &args.tls_key {
        config.tls_key = Some(key.clone());
    }
    if args.insecure {
        config.insecure = true;
    }
    if let Some(id) = args.node_id {
        config.node_id = id;
    }
    if let Some(addr) = &args.raft_addr {
        config.raft_addr = addr.clone();
    }
    if !args.peers.is_empty() {
        config.peers = args.peers.clone();
    }
    if let Some(at) = &args.join {
        config.join = Some(at.clone());
    }
    if let Some(ms) = args.read_staleness_ms {
        config.read_staleness_ms = ms;
    }
    if let Some(n) = args.replication_factor {
        config.replication_factor = n;
    }
    if let Some(zone) = &args.zone {
        config.zone = Some(zone.clone());
    }
    if let Some(placement) = args.shard_leaders {
        config.shard_leaders = placement;
    }
    for (flag, key) in [
        (&args.peer_tls_cert, &mut config.peer_tls_cert),
        (&args.peer_tls_key, &mut config.peer_tls_key),
        (&args.peer_tls_ca, &mut config.peer_tls_ca),
    ] {
        if let Some(path) = flag {
            *key = Some(path.clone());
        }
    }
    Ok(config)
}

/// Adds the API keys of `COHORT_API_KEYS` (its text, if set) to those of
/// the configuration file.
pub fn add_env_keys(config: &mut NodeConfig, env: Option<&str>) -> anyhow::Result<()> {
    if let Some(text) = env {
        config.api_keys.extend(crate::server::auth::parse_keys_env(text)?);
    }
    Ok(())
}

/// Parses the text of a configuration file.
fn parse_config(text: &str) -> Result<NodeConfig, toml::de::Error> {
    toml::from_str(text)
}

/// `cohort serve`.
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = node_config(&args)?;
    let env = match std::env::var("COHORT_API_KEYS") {
        Ok(text) => Some(text),
        Err(std::env::VarError::NotPresent) => None,
        Err(std::env::VarError::NotUnicode(_)) => anyhow::bail!("COHORT_API_KEYS is not valid UTF-8"),
    };
    add_env_keys(&mut config, env.as_deref())?;
    crate::server::serve(config).await
}

/// `cohort demo`.
pub async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    if args.shards == 0 {
        anyhow::bail!("--shards must be at least 1");
    }
    let defaults = NodeConfig::default();
    crate::server::demo::run(crate::server::demo::DemoOptions {
        profiles: args.profiles,
        shards: args.shards,
        seed: args.seed,
        data_dir: args.data_dir,
        grpc_addr: args.grpc_addr.unwrap_or(defaults.grpc_addr),
        http_addr: args.http_addr.unwrap_or(defaults.http_addr),
        serve: !args.no_serve,
        insecure: args.insecure,
    })
    .await
}

// ------------------------------------------------------------ schema

/// `cohort schema show`.
pub async fn schema_show(node: &Node, prefix: &str, page_size: u32, json: bool) -> anyhow::Result<()> {
    let reply = read_schema(node, prefix, page_size).await?;
    print_schema(&reply, json)
}

/// The whole schema (or the part under `prefix`), read page by page and
/// joined into one reply: an event continued from one page to the next is
/// joined under its name.
async fn read_schema(node: &Node, prefix: &str, page_size: u32) -> anyhow::Result<pb::SchemaReply> {
    let ask = |page_token: String| pb::GetSchemaRequest {
        limit: page_size,
        page_token,
        prefix: prefix.to_string(),
    };
    let mut whole = node.call(node.admin().get_schema(node.request(ask(String::new())))).await?.into_inner();
    // Each page lists at least one new entry, so there are at most as many
    // pages as entries; the schema may grow while it is read, hence the
    // margin.
    let entries = whole.trait_count + whole.event_count + whole.property_count;
    let most_pages = entries.saturating_mul(2).saturating_add(16);
    let mut pages = 1u64;
    while !whole.next_page_token.is_empty() {
        if pages >= most_pages {
            anyhow::bail!("the schema did not end after {pages} pages of at most {page_size} entries");
        }
        let token = std::mem::take(&mut whole.next_page_token);
        let page = node.call(node.admin().get_schema(node.request(ask(token)))).await?.into_inner();
        pages += 1;
        whole.traits.extend(page.traits);
        let mut events = page.events.into_iter();
        if let (Some(last), Some(first)) = (whole.events.last_mut(), events.as_slice().first()) {
            if last.name == first.name {
                let first = events.next().unwrap_or_default();
                last.properties.extend(first.properties);
            }
        }
        whole.events.extend(events);
        (whole.next_page_token, whole.caps) = (page.next_page_token, page.caps);
        (whole.trait_count, whole.event_count, whole.property_count) =
            (page.trait_count, page.event_count, page.property_count);
    }
    Ok(whole)
}

/// `cohort schema apply FILE`: the file must be JSON (checked here, so that
/// a typo is reported with its line and column); the node checks the rest.
pub async fn schema_apply(node: &Node, file: &Path, json: bool) -> anyhow::Result<()> {
    let text = read_text(file)?;
    serde_json::from_str::<Json>(&text).with_context(|| format!("{} is not JSON", file.display()))?;
    let request = node.request(pb::ApplySchemaRequest { json: text });
    node.call(node.admin().apply_schema(request)).await?;
    // The reply holds the first page; the whole schema is read again.
    print_schema(&read_schema(node, "", 1000).await?, json)
}

/// Reads a file, or standard input for `-`.
fn read_text(file: &Path) -> anyhow::Result<String> {
    if file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .context("cannot read standard input")?;
        return Ok(text);
    }
    std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))
}

fn origin(declared: bool) -> &'static str {
    if declared {
        "declared"
    } else {
        "inferred"
    }
}

fn field_json(f: &pb::SchemaField) -> Json {
    json!({ "name": f.name, "type": f.r#type, "declared": f.declared })
}

fn print_schema(reply: &pb::SchemaReply, json: bool) -> anyhow::Result<()> {
    let caps = reply.caps.unwrap_or_default();
    if json {
        return Out::json(&json!({
            "traits": reply.traits.iter().map(field_json).collect::<Vec<_>>(),
            "events": reply.events.iter().map(|e| json!({
                "name": e.name,
                "properties": e.properties.iter().map(field_json).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "counts": {
                "traits": reply.trait_count,
                "events": reply.event_count,
                "properties": reply.property_count,
            },
            "caps": {
                "max_traits": caps.max_traits,
                "max_events": caps.max_events,
                "max_properties_per_event": caps.max_properties_per_event,
                "max_properties": caps.max_properties,
                "max_name_bytes": caps.max_name_bytes,
            },
        }));
    }
    let mut traits = Table::new(vec![Column::text("trait"), Column::text("type"), Column::text("origin")]);
    for f in &reply.traits {
        traits.push(vec![f.name.clone(), f.r#type.clone(), origin(f.declared).into()]);
    }
    let mut events = Table::new(vec![
        Column::text("event"),
        Column::text("property"),
        Column::text("type"),
        Column::text("origin"),
    ]);
    for e in &reply.events {
        if e.properties.is_empty() {
            events.push(vec![e.name.clone()]);
        }
        for f in &e.properties {
            events.push(vec![e.name.clone(), f.name.clone(), f.r#type.clone(), origin(f.declared).into()]);
        }
    }
    let mut out = format!("{}\n", output::plural(reply.traits.len() as u64, "trait", "traits"));
    out.push_str(&traits.render());
    out.push_str(&format!("\n{}\n", output::plural(reply.events.len() as u64, "event", "events")));
    out.push_str(&events.render());
    out.push_str(&format!(
        "\nschema: {} of at most {} traits, {} of {} events, {} of {} properties \
         (at most {} per event), names of at most {} bytes\n",
        reply.trait_count,
        caps.max_traits,
        reply.event_count,
        caps.max_events,
        reply.property_count,
        caps.max_properties,
        caps.max_properties_per_event,
        caps.max_name_bytes
    ));
    Out::text(&out)
}

// ------------------------------------------------------------ queries

/// `cohort count`.
pub async fn count(
    node: &Node,
    now: Option<String>,
    partial: bool,
    expressions: Vec<String>,
    json: bool,
) -> anyhow::Result<()> {
    let request = node.request(pb::CountRequest {
        expressions: expressions.clone(),
        now: now.unwrap_or_default(),
        max_staleness_ms: 0,
        allow_partial: partial,
    });
    let started = Instant::now();
    let reply = node.call(node.query().count(request)).await.map_err(|e| about_one(e, &expressions))?;
    let took = started.elapsed();
    let reply = reply.into_inner();
    if reply.counts.len() != expressions.len() {
        anyhow::bail!(
            "the node answered {} counts for {} expressions",
            reply.counts.len(),
            expressions.len()
        );
    }
    if json {
        return Out::json(&json!({
            "now": reply.now,
            "universe": reply.universe,
            "elapsed_ms": took.as_secs_f64() * 1e3,
            "staleness_ms": reply.staleness_ms,
            "missing_shards": missing_json(&reply.missing_shards),
            "counts": expressions.iter().zip(&reply.counts)
                .map(|(e, c)| json!({ "expression": e, "count": c }))
                .collect::<Vec<_>>(),
        }));
    }
    let mut table = Table::new(vec![Column::num("count"), Column::num("share"), Column::text("expression")]);
    for (e, c) in expressions.iter().zip(&reply.counts) {
        table.push(vec![output::count(*c), output::share(*c, reply.universe), e.clone()]);
    }
    let mut out = table.render();
    // A cluster's replicas read were confirmed current this long before.
    let staleness = if reply.staleness_ms > 0 {
        format!(", replicas current as of {} ms before", reply.staleness_ms)
    } else {
        String::new()
    };
    out.push_str(&format!(
        "\nuniverse {} profiles, now {}, answered in {}{staleness}\n",
        output::count(reply.universe),
        reply.now,
        output::elapsed(took)
    ));
    out.push_str(&missing_text(&reply.missing_shards));
    Out::text(&out)
}

/// The shards a partial answer left out, for `--json`.
fn missing_json(missing: &[pb::MissingShard]) -> serde_json::Value {
    missing.iter().map(|m| json!({ "shard": m.shard, "reason": m.reason })).collect()
}

/// The shards a partial answer left out, a line each (nothing when none).
fn missing_text(missing: &[pb::MissingShard]) -> String {
    missing.iter().map(|m| format!("partial: shard {} left out: {}\n", m.shard, m.reason)).collect()
}

/// Attaches the expression a query error is about, so that the position the
/// node names can be pointed at: the only one, or the one the message quotes
/// (the node writes `in "EXPR": ...` when a call carries several).
fn about_one(e: super::RpcError, expressions: &[String]) -> super::RpcError {
    let found = match expressions {
        [one] => Some(one),
        many => many.iter().find(|x| e.status.message().contains(&format!("in {x:?}:"))),
    };
    match found {
        Some(x) => {
            let x = x.clone();
            e.about(&x)
        }
        None => e,
    }
}

/// `cohort check`.
pub async fn check(
    node: &Node,
    now: Option<String>,
    id: String,
    expressions: Vec<String>,
    json: bool,
) -> anyhow::Result<()> {
    let request = node.request(pb::CheckRequest {
        profile: id.clone(),
        expressions: expressions.clone(),
        now: now.unwrap_or_default(),
    });
    let reply = node.call(node.query().check(request)).await.map_err(|e| about_one(e, &expressions))?;
    let reply = reply.into_inner();
    if reply.matches.len() != expressions.len() {
        anyhow::bail!(
            "the node answered {} times for {} expressions",
            reply.matches.len(),
            expressions.len()
        );
    }
    if json {
        return Out::json(&json!({
            "profile": id,
            "profile_id": reply.profile_id,
            "now": reply.now,
            "matches": expressions.iter().zip(&reply.matches)
                .map(|(e, m)| json!({ "expression": e, "match": m }))
                .collect::<Vec<_>>(),
        }));
    }
    let mut table = Table::new(vec![Column::text("in"), Column::text("expression")]);
    for (e, m) in expressions.iter().zip(&reply.matches) {
        table.push(vec![if *m { "yes" } else { "no" }.into(), e.clone()]);
    }
    let mut out = format!("profile {} ({id}), now {}\n\n", reply.profile_id, reply.now);
    out.push_str(&table.render());
    Out::text(&out)
}

/// Anonymous ids in a cell: the first three, then how many more.
fn anonymous_cell(ids: &[String]) -> String {
    const SHOWN: usize = 3;
    let mut cell = ids.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
    if ids.len() > SHOWN {
        cell.push_str(&format!(" (+{})", ids.len() - SHOWN));
    }
    cell
}

/// `cohort members`: pages are printed as they arrive (a table keeps the
/// first page's column widths); at the end, the cursor to resume from when
/// the limit stopped the listing.
pub async fn members(node: &Node, args: MembersArgs, json: bool) -> anyhow::Result<()> {
    // No grpc-timeout here: the node would apply it to the whole listing,
    // which may rightly take longer than one call. Each page has the limit.
    let request = tonic::Request::new(pb::MembersRequest {
        expression: args.expression.clone(),
        traits: args.traits.clone(),
        page_size: args.page_size.unwrap_or(0),
        cursor: args.cursor.clone().unwrap_or_default(),
        limit: args.limit,
        now: args.now.clone().unwrap_or_default(),
        max_staleness_ms: 0,
    });
    let mut client = node.query();
    let mut stream =
        node.call(client.members(request)).await.map_err(|e| e.about(&args.expression))?.into_inner();
    let mut columns = vec![Column::num("profile_id"), Column::text("user_id"), Column::text("anonymous_ids")];
    columns.extend(args.traits.iter().map(|t| Column::text(t)));
    let mut table = Table::new(columns);
    let mut widths: Option<Vec<usize>> = None;
    let mut shown = 0u64;
    let mut cursor = String::new();
    if json {
        Out::text(&format!(
            "{{\n  \"expression\": {},\n  \"members\": [",
            Json::String(args.expression.clone())
        ))?;
    }
    while let Some(page) = node.call(stream.message()).await? {
        cursor = page.cursor;
        for m in page.members {
            if json {
                let traits: serde_json::Map<String, Json> =
                    m.traits.iter().map(|(k, v)| (k.clone(), output::json_value(v))).collect();
                let member = json!({
                    "profile_id": m.profile_id,
                    "user_id": m.user_id,
                    "anonymous_ids": m.anonymous_ids,
                    "traits": traits,
                });
                let sep = if shown == 0 { "\n    " } else { ",\n    " };
                Out::text(&format!("{sep}{member}"))?;
            } else {
                let mut row =
                    vec![m.profile_id.to_string(), m.user_id.clone(), anonymous_cell(&m.anonymous_ids)];
                row.extend(
                    args.traits
                        .iter()
                        .map(|t| m.traits.get(t).map(|v| output::json_cell(v)).unwrap_or_default()),
                );
                table.push(row);
            }
            shown += 1;
        }
        if !json && !table.is_empty() {
            let first = widths.is_none();
            let w = widths.get_or_insert_with(|| table.widths());
            Out::text(&table.render_with(w, first))?;
            table.clear();
        }
    }
    if json {
        let cursor = if cursor.is_empty() { Json::Null } else { Json::String(cursor) };
        let end = if shown == 0 { "" } else { "\n  " };
        return Out::text(&format!("{end}],\n  \"count\": {shown},\n  \"cursor\": {cursor}\n}}\n"));
    }
    let mut out = String::new();
    if shown == 0 {
        out.push_str("no members\n");
    } else {
        out.push_str(&format!("\n{}\n", output::plural(shown, "member", "members")));
    }
    if !cursor.is_empty() {
        out.push_str(&format!("more remain: resume with --cursor {cursor}\n"));
    }
    Out::text(&out)
}

/// `cohort breakdown`.
pub async fn breakdown(
    node: &Node,
    top: u32,
    partial: bool,
    now: Option<String>,
    trait_name: String,
    expression: String,
    json: bool,
) -> anyhow::Result<()> {
    let request = node.request(pb::BreakdownRequest {
        trait_name: trait_name.clone(),
        expression: expression.clone(),
        top,
        now: now.unwrap_or_default(),
        max_staleness_ms: 0,
        allow_partial: partial,
    });
    let reply =
        node.call(node.query().breakdown(request)).await.map_err(|e| e.about(&expression))?.into_inner();
    if json {
        return Out::json(&json!({
            "trait": trait_name,
            "expression": expression,
            "now": reply.now,
            "rows": reply.rows.iter()
                .map(|r| json!({ "value": output::json_value(&r.value), "count": r.count }))
                .collect::<Vec<_>>(),
            "missing": reply.missing,
            "total": reply.total,
            "missing_shards": missing_json(&reply.missing_shards),
        }));
    }
    // Shares are of all members; the rows need not add up to the total (a
    // list trait counts a member once per value, and only the top N show).
    let mut table = Table::new(vec![Column::text(&trait_name), Column::num("count"), Column::num("share")]);
    for r in &reply.rows {
        table.push(vec![
            output::json_cell(&r.value),
            output::count(r.count),
            output::share(r.count, reply.total),
        ]);
    }
    table.push(vec![
        "(missing)".into(),
        output::count(reply.missing),
        output::share(reply.missing, reply.total),
    ]);
    table.push(vec!["(total)".into(), output::count(reply.total), output::share(reply.total, reply.total)]);
    let mut out = table.render();
    out.push_str(&format!("\nnow {}\n", reply.now));
    out.push_str(&missing_text(&reply.missing_shards));
    Out::text(&out)
}

/// `cohort profile`.
pub async fn profile(node: &Node, events: u32, id: String, json: bool) -> anyhow::Result<()> {
    let request = node.request(pb::GetProfileRequest { profile: id, recent_events: events });
    let p = node.call(node.query().get_profile(request)).await?.into_inner();
    if json {
        return Out::json(&json!({
            "profile_id": p.profile_id,
            "shard": p.shard,
            "identifiers": p.identifiers.iter()
                .map(|i| json!({ "kind": i.kind, "value": i.value }))
                .collect::<Vec<_>>(),
            "first_seen": p.first_seen,
            "last_seen": p.last_seen,
            "traits": p.traits.iter()
                .map(|t| json!({ "name": t.name, "value": output::json_value(&t.value), "written_at": t.written_at }))
                .collect::<Vec<_>>(),
            "recent_events": p.recent_events.iter()
                .map(|e| json!({ "name": e.name, "time": e.time, "properties": output::json_value(&e.properties) }))
                .collect::<Vec<_>>(),
            "event_count": p.event_count,
            "segments": p.segments,
        }));
    }
    let mut out = output::key_values(&[
        ("profile", p.profile_id.to_string()),
        ("shard", p.shard.to_string()),
        ("first seen", p.first_seen.clone()),
        ("last seen", p.last_seen.clone()),
        ("events", output::count(p.event_count)),
        ("segments", if p.segments.is_empty() { "(none)".into() } else { p.segments.join(", ") }),
    ]);
    let mut ids = Table::new(vec![Column::text("identifier"), Column::text("value")]);
    for i in &p.identifiers {
        ids.push(vec![i.kind.clone(), i.value.clone()]);
    }
    out.push('\n');
    out.push_str(&ids.render());
    let mut traits =
        Table::new(vec![Column::text("trait"), Column::text("value"), Column::text("written_at")]);
    for t in &p.traits {
        traits.push(vec![t.name.clone(), output::json_cell(&t.value), t.written_at.clone()]);
    }
    out.push('\n');
    out.push_str(&traits.render());
    let mut recent =
        Table::new(vec![Column::text("time"), Column::text("event"), Column::text("properties")]);
    for e in &p.recent_events {
        let props = match e.properties.as_str() {
            "{}" | "" => String::new(),
            text => output::json_cell(text),
        };
        recent.push(vec![e.time.clone(), e.name.clone(), props]);
    }
    out.push_str(&format!(
        "\nlatest {} of {} events\n",
        output::count(p.recent_events.len() as u64),
        output::count(p.event_count)
    ));
    out.push_str(&recent.render());
    Out::text(&out)
}

// ------------------------------------------------------------ segments

fn segment_json(s: &pb::SavedSegment) -> Json {
    json!({
        "name": s.name,
        "expression": s.expression,
        "description": s.description,
        "created_at": s.created_at,
    })
}

fn segment_text(s: &pb::SavedSegment) -> String {
    output::key_values(&[
        ("name", s.name.clone()),
        ("expression", s.expression.clone()),
        ("description", s.description.clone()),
        ("created at", s.created_at.clone()),
    ])
}

/// `cohort segment ...`.
pub async fn segment(node: &Node, command: SegmentCommand, json: bool) -> anyhow::Result<()> {
    let mut client = node.segments();
    match command {
        SegmentCommand::Create { name, expression, description } => {
            let request =
                node.request(pb::CreateSegmentRequest { name, expression: expression.clone(), description });
            let s = node
                .call(client.create_segment(request))
                .await
                .map_err(|e| e.about(&expression))?
                .into_inner();
            if json {
                return Out::json(&segment_json(&s));
            }
            Out::text(&format!("created segment {}\n\n{}", s.name, segment_text(&s)))
        }
        SegmentCommand::List => {
            let reply =
                node.call(client.list_segments(node.request(pb::ListSegmentsRequest {}))).await?.into_inner();
            if json {
                return Out::json(&json!({
                    "segments": reply.segments.iter().map(segment_json).collect::<Vec<_>>(),
                }));
            }
            let mut table = Table::new(vec![
                Column::text("name"),
                Column::text("created_at"),
                Column::text("expression"),
                Column::text("description"),
            ]);
            for s in &reply.segments {
                table.push(vec![
                    s.name.clone(),
                    s.created_at.clone(),
                    s.expression.clone(),
                    s.description.clone(),
                ]);
            }
            let mut out = table.render();
            out.push_str(&format!(
                "\n{}\n",
                output::plural(reply.segments.len() as u64, "saved segment", "saved segments")
            ));
            Out::text(&out)
        }
        SegmentCommand::Show { name } => {
            let s = node
                .call(client.get_segment(node.request(pb::GetSegmentRequest { name })))
                .await?
                .into_inner();
            if json {
                return Out::json(&segment_json(&s));
            }
            Out::text(&segment_text(&s))
        }
        SegmentCommand::Delete { name } => {
            let request = node.request(pb::DeleteSegmentRequest { name: name.clone() });
            node.call(client.delete_segment(request)).await?;
            if json {
                return Out::json(&json!({ "deleted": name }));
            }
            Out::line(&format!("deleted segment {name}"))
        }
    }
}

// ------------------------------------------------------------ admin

/// `cohort status`.
pub async fn status(node: &Node, json: bool) -> anyhow::Result<()> {
    let s = node.call(node.admin().status(node.request(pb::StatusRequest {}))).await?.into_inner();
    if json {
        return Out::json(&json!({
            "addr": node.addr(),
            "node_id": s.node_id,
            "version": s.version,
            "data_dir": s.data_dir,
            "uptime_ms": s.uptime_ms,
            "profiles": s.profiles,
            "events": s.events,
            "memory_bytes": s.memory_bytes,
            "messages_applied": s.messages_applied,
            "messages_rejected": s.messages_rejected,
            "duplicates": s.duplicates,
            "merges": s.merges,
            "raft_messages_sent": s.raft_messages_sent,
            "raft_bytes_sent": s.raft_bytes_sent,
            "raft_messages_dropped": s.raft_messages_dropped,
            "snapshot_bytes_sent": s.snapshot_bytes_sent,
            "groups": s.groups.iter().map(|g| json!({
                "group_id": g.group_id,
                "name": g.name,
                "role": g.role,
                "term": g.term,
                "commit_index": g.commit_index,
                "applied_index": g.applied_index,
                "leader_id": g.leader_id,
                "snapshot_index": g.snapshot_index,
                "rows": g.rows,
                "memory_bytes": g.memory_bytes,
            })).collect::<Vec<_>>(),
        }));
    }
    let mut pairs = vec![
        ("node", format!("{} at {}", s.node_id, node.addr())),
        ("version", s.version.clone()),
        (
            "data dir",
            // The node leaves it out for keys without the admin role.
            if s.data_dir.is_empty() {
                "(not shown: needs an API key with the admin role)".into()
            } else {
                s.data_dir.clone()
            },
        ),
        ("uptime", output::duration_ms(s.uptime_ms)),
        ("profiles", output::count(s.profiles)),
        ("events", output::count(s.events)),
        ("memory", output::bytes(s.memory_bytes)),
        ("messages applied", output::count(s.messages_applied)),
        ("rejections", output::count(s.messages_rejected)),
        ("duplicates", output::count(s.duplicates)),
        ("merges", output::count(s.merges)),
    ];
    if !s.nodes.is_empty() {
        pairs.extend([
            (
                "peers",
                s.nodes
                    .iter()
                    .map(|n| format!("{} at {}", n.node_id, n.grpc_addr))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            (
                "raft sent",
                format!(
                    "{} messages, {} ({} dropped, to be sent again); snapshots {}",
                    output::count(s.raft_messages_sent),
                    output::bytes(s.raft_bytes_sent),
                    output::count(s.raft_messages_dropped),
                    output::bytes(s.snapshot_bytes_sent)
                ),
            ),
        ]);
    }
    let mut out = output::key_values(&pairs);
    let mut table = Table::new(vec![
        Column::num("group"),
        Column::text("name"),
        Column::text("role"),
        Column::num("term"),
        Column::num("commit"),
        Column::num("applied"),
        Column::num("leader"),
        Column::num("snapshot"),
        Column::num("rows"),
        Column::num("memory"),
    ]);
    for g in &s.groups {
        table.push(vec![
            g.group_id.to_string(),
            g.name.clone(),
            g.role.clone(),
            g.term.to_string(),
            g.commit_index.to_string(),
            g.applied_index.to_string(),
            g.leader_id.to_string(),
            g.snapshot_index.to_string(),
            output::count(g.rows),
            output::bytes(g.memory_bytes),
        ]);
    }
    out.push('\n');
    out.push_str(&table.render());
    Out::text(&out)
}

/// `cohort cluster status`: the node of `node` names the cluster's nodes;
/// each is asked for its state (within `timeout`, over the scheme and
/// credentials of `node`), and the groups are shown across them.
pub async fn cluster_status(
    node: &Node,
    access: &Access,
    timeout: std::time::Duration,
    json: bool,
) -> anyhow::Result<()> {
    let (first, answers) = statuses(node, access, timeout).await?;
    let groups = group_views(&answers);
    // A group's leader and term are those of the highest term any node
    // reports a leader in; its commit the highest any node reports; its
    // lag that of the slowest replica it has.
    let summary = |views: &[(u64, pb::GroupStatus)]| {
        let (leader, commit) = leader_and_commit(views);
        let (voters, learners) = leader_conf(views);
        let slowest = views
            .iter()
            .filter(|(id, _)| voters.contains(id) || learners.contains(id))
            .map(|(_, g)| g.applied_index)
            .min()
            .unwrap_or(0);
        (leader, commit, commit.saturating_sub(slowest))
    };
    let led =
        |id: u64| groups.values().filter(|(_, views)| summary(views).0.is_some_and(|(l, _)| l == id)).count();
    let conf = |views: &[(u64, pb::GroupStatus)]| leader_conf(views);
    let member_state =
        |id: u64| first.nodes.iter().find(|n| n.node_id == id).map_or(String::new(), |n| n.state.clone());
    let zone_of =
        |id: u64| first.nodes.iter().find(|n| n.node_id == id).map_or(String::new(), |n| n.zone.clone());
    if json {
        return Out::json(&json!({
            "asked": node.addr(),
            "replication_factor": first.replication_factor,
            "nodes": answers.iter().map(|(id, addr, answer)| match answer {
                Ok(r) => json!({
                    "node_id": id, "addr": addr, "reachable": true, "groups_led": led(*id),
                    "member": member_state(*id), "zone": zone_of(*id),
                    "profiles": r.profiles, "uptime_ms": r.uptime_ms, "version": r.version,
                }),
                Err(e) => json!({
                    "node_id": id, "addr": addr, "reachable": false, "member": member_state(*id),
                    "zone": zone_of(*id), "error": e,
                }),
            }).collect::<Vec<_>>(),
            "groups": groups.iter().map(|(gid, (name, views))| {
                let (leader, commit, lag) = summary(views);
                let (voters, learners) = conf(views);
                json!({
                    "group_id": gid, "name": name,
                    "leader_id": leader.map_or(0, |(l, _)| l), "term": leader.map_or(0, |(_, t)| t),
                    "commit_index": commit, "lag": lag, "voters": voters, "learners": learners,
                    "placed": placed_of(views),
                    "replicas": views.iter().map(|(id, g)| json!({
                        "node_id": id, "role": g.role, "term": g.term, "applied_index": g.applied_index,
                    })).collect::<Vec<_>>(),
                })
            }).collect::<Vec<_>>(),
        }));
    }
    render_cluster_status(node, &first, &answers, &groups, summary, led, member_state)
}

/// Every group's view from each node that answered: (name, [(node,
/// its status of the group)]) by group id.
type GroupViews = std::collections::BTreeMap<u64, (String, Vec<(u64, pb::GroupStatus)>)>;

/// Each node's answer to Status: (node, address, reply or why not).
type NodeAnswers = Vec<(u64, String, Result<pb::StatusReply, String>)>;

/// Asks the node of `node` for the cluster's nodes, then each of them
/// (at once: a node that is down costs one timeout, not one each) for
/// its status.
async fn statuses(
    node: &Node,
    access: &Access,
    timeout: std::time::Duration,
) -> anyhow::Result<(pb::StatusReply, NodeAnswers)> {
    let first = node.call(node.admin().status(node.request(pb::StatusRequest {}))).await?.into_inner();
    let members: Vec<(u64, String)> = if first.nodes.is_empty() {
        vec![(first.node_id, node.addr().to_string())]
    } else {
        first.nodes.iter().map(|n| (n.node_id, n.grpc_addr.clone())).collect()
    };
    let scheme = if node.addr().starts_with("https://") { "https://" } else { "http://" };
    // Every node at once: a node that is down costs one timeout, not one
    // each.
    let mut asks = Vec::new();
    for (id, addr) in members {
        let addr = if addr.contains("://") { addr } else { format!("{scheme}{addr}") };
        if id == first.node_id {
            asks.push((id, addr, None));
            continue;
        }
        let (target, access) = (addr.clone(), access.clone());
        let task = tokio::spawn(async move {
            let other = Node::connect(&target, timeout, &access).await?;
            let reply = other.call(other.admin().status(other.request(pb::StatusRequest {}))).await?;
            Ok::<_, anyhow::Error>(reply.into_inner())
        });
        asks.push((id, addr, Some(task)));
    }
    let mut answers: Vec<(u64, String, Result<pb::StatusReply, String>)> = Vec::new();
    for (id, addr, task) in asks {
        let answer = match task {
            None => Ok(first.clone()),
            Some(task) => match task.await {
                Ok(answer) => answer.map_err(|e| format!("{e:#}")),
                Err(e) => Err(format!("the call failed: {e}")),
            },
        };
        answers.push((id, addr, answer));
    }
    Ok((first, answers))
}

/// The groups by id, with each node's view of them.
fn group_views(answers: &NodeAnswers) -> GroupViews {
    let mut groups = GroupViews::default();
    for (id, _, answer) in answers {
        if let Ok(reply) = answer {
            for g in &reply.groups {
                groups
                    .entry(g.group_id)
                    .or_insert_with(|| (g.name.clone(), Vec::new()))
                    .1
                    .push((*id, g.clone()));
            }
        }
    }
    groups
}

/// A group's (leader, term): those of the highest term any node reports
/// a leader in; and its commit index, the highest any node reports.
fn leader_and_commit(views: &[(u64, pb::GroupStatus)]) -> (Option<(u64, u64)>, u64) {
    let leader = views
        .iter()
        .filter(|(_, g)| g.leader_id != 0)
        .max_by_key(|(_, g)| g.term)
        .map(|(_, g)| (g.leader_id, g.term));
    (leader, views.iter().map(|(_, g)| g.commit_index).max().unwrap_or(0))
}

/// A group's (voters, learners) as its leader has them (else as the node
/// with the highest commit index has them: a node that holds no replica
/// has an empty or old configuration).
fn leader_conf(views: &[(u64, pb::GroupStatus)]) -> (Vec<u64>, Vec<u64>) {
    let leader = leader_and_commit(views).0.map(|(l, _)| l);
    views
        .iter()
        .find(|(id, _)| Some(*id) == leader)
        .or(views.iter().max_by_key(|(_, g)| g.commit_index))
        .map(|(_, g)| (g.voters.clone(), g.learners.clone()))
        .unwrap_or_default()
}

/// The voters the placement wants for a group, as the node with the
/// highest applied catalog has it (every node reports the same
/// placement once it has applied the same catalog).
fn placed_of(views: &[(u64, pb::GroupStatus)]) -> Vec<u64> {
    views.iter().find(|(_, g)| !g.placed.is_empty()).map(|(_, g)| g.placed.clone()).unwrap_or_default()
}

/// The groups whose configuration (as their leader has it) is not their
/// placement yet, with what each has and wants; `members` are the
/// active members (the catalog's non-voters among them follow it as
/// learners).
fn unplaced(groups: &GroupViews, members: &[u64]) -> Vec<String> {
    let mut pending = Vec::new();
    for (gid, (name, views)) in groups {
        let placed = placed_of(views);
        if placed.is_empty() {
            continue;
        }
        let (mut voters, mut learners) = leader_conf(views);
        voters.sort_unstable();
        learners.sort_unstable();
        let mut want_learners: Vec<u64> = if *gid == crate::cluster::placement::CATALOG_GROUP {
            members.iter().copied().filter(|id| !placed.contains(id)).collect()
        } else {
            Vec::new()
        };
        want_learners.sort_unstable();
        if voters != placed || learners != want_learners {
            pending.push(format!("{name} has {voters:?}+{learners:?}, wants {placed:?}+{want_learners:?}"));
        }
    }
    pending
}

/// `cohort cluster status` as text.
fn render_cluster_status(
    node: &Node,
    first: &pb::StatusReply,
    answers: &NodeAnswers,
    groups: &GroupViews,
    summary: impl Fn(&[(u64, pb::GroupStatus)]) -> (Option<(u64, u64)>, u64, u64),
    led: impl Fn(u64) -> usize,
    member_state: impl Fn(u64) -> String,
) -> anyhow::Result<()> {
    // The member's state, and its zone when it has one.
    let member_state = |id: u64| {
        let zone = first.nodes.iter().find(|n| n.node_id == id).map_or("", |n| n.zone.as_str());
        match zone {
            "" => member_state(id),
            zone => format!("{}, zone {zone}", member_state(id)),
        }
    };
    let conf = leader_conf;
    let reachable = answers.iter().filter(|(_, _, a)| a.is_ok()).count();
    let factor = match first.replication_factor {
        0 => String::new(),
        n => format!("; {} per group", output::plural(n as u64, "voter", "voters")),
    };
    let mut out = format!(
        "{} ({} reachable), asked through {}{factor}\n\n",
        output::plural(answers.len() as u64, "node", "nodes"),
        reachable,
        node.addr()
    );
    let mut nodes = Table::new(vec![
        Column::num("node"),
        Column::text("address"),
        Column::text("state"),
        Column::text("member"),
        Column::num("leads"),
        Column::num("profiles"),
        Column::text("uptime"),
    ]);
    let mut down = Vec::new();
    for (id, addr, answer) in answers {
        match answer {
            Ok(r) => nodes.push(vec![
                id.to_string(),
                addr.clone(),
                "up".into(),
                member_state(*id),
                led(*id).to_string(),
                output::count(r.profiles),
                output::duration_ms(r.uptime_ms),
            ]),
            Err(e) => {
                nodes.push(vec![
                    id.to_string(),
                    addr.clone(),
                    "unreachable".into(),
                    member_state(*id),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                ]);
                down.push(format!("node {id}: {e}"));
            }
        }
    }
    out.push_str(&nodes.render());
    for line in &down {
        out.push_str(&format!("  {line}\n"));
    }
    let ids: Vec<u64> = answers.iter().map(|(id, _, _)| *id).collect();
    let mut table = Table::new(vec![
        Column::num("group"),
        Column::text("name"),
        Column::num("leader"),
        Column::num("term"),
        Column::num("commit"),
        Column::text(&format!(
            "applied on {}",
            ids.iter().map(|i| format!("n{i}")).collect::<Vec<_>>().join(" / ")
        )),
        Column::num("lag"),
        Column::text("voters (+learners)"),
    ]);
    for (gid, (name, views)) in groups {
        let (leader, commit, lag) = summary(views);
        let (voters, learners) = conf(views);
        let ids_text = |ids: &[u64]| ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
        let mut configuration = if learners.is_empty() {
            ids_text(&voters)
        } else {
            format!("{} +{}", ids_text(&voters), ids_text(&learners))
        };
        let placed = placed_of(views);
        let mut sorted_voters = voters.clone();
        sorted_voters.sort_unstable();
        if !placed.is_empty() && placed != sorted_voters {
            configuration.push_str(&format!(" (moving to {})", ids_text(&placed)));
        }
        let applied = ids
            .iter()
            .map(|i| {
                views
                    .iter()
                    .find(|(v, _)| v == i)
                    .map_or("-".to_string(), |(_, g)| g.applied_index.to_string())
            })
            .collect::<Vec<_>>()
            .join(" / ");
        table.push(vec![
            gid.to_string(),
            name.clone(),
            leader.map_or("none".into(), |(l, _)| l.to_string()),
            leader.map_or("-".into(), |(_, t)| t.to_string()),
            commit.to_string(),
            applied,
            lag.to_string(),
            configuration,
        ]);
    }
    out.push('\n');
    out.push_str(&table.render());
    Out::text(&out)
}

/// How long `cohort cluster add-node`, `remove-node`, `move-replica` and
/// `rebalance` wait for every group to take the change.
const MEMBERSHIP_WAIT: std::time::Duration = std::time::Duration::from_secs(300);

/// `cohort cluster add-node` (`remove: false`) and `remove-node`: changes
/// the member table through the node asked, then waits until every group
/// matches the placement (each group's configuration as its leader has
/// it), and the node is in the catalog (added) or in no group (removed).
#[allow(clippy::too_many_arguments)]
pub async fn cluster_set_member(
    node: &Node,
    access: &Access,
    timeout: std::time::Duration,
    node_id: u64,
    raft_addr: String,
    grpc_addr: String,
    remove: bool,
    json: bool,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let request = node.request(pb::SetMemberRequest { node_id, raft_addr, grpc_addr, remove });
    node.call(node.admin().set_member(request)).await?;
    let what = if remove { "removed from" } else { "added to" };
    if !json {
        eprintln!("node {node_id} {what} the member table; waiting for every group to follow");
    }
    let holds = |views: &[(u64, pb::GroupStatus)]| {
        let (voters, learners) = leader_conf(views);
        voters.contains(&node_id) || learners.contains(&node_id)
    };
    let (groups, secs) = wait_until_placed(node, access, timeout, json, started, |groups| {
        groups
            .values()
            .filter(|(name, views)| if remove { holds(views) } else { name == "catalog" && !holds(views) })
            .map(|(name, _)| {
                format!("{name} {} node {node_id}", if remove { "still holds" } else { "lacks" })
            })
            .collect()
    })
    .await?;
    let voter_of = groups.values().filter(|(_, views)| leader_conf(views).0.contains(&node_id)).count();
    if json {
        return Out::json(&json!({
            "node_id": node_id, "removed": remove, "groups": groups.len(), "voter_of": voter_of, "seconds": secs,
        }));
    }
    if remove {
        return Out::text(&format!(
            "node {node_id} removed from all {} groups in {secs:.1} s; it can be stopped\n",
            groups.len()
        ));
    }
    Out::text(&format!(
        "node {node_id} added in {secs:.1} s: it follows the catalog and holds {} of {} groups as a voter (`cohort cluster rebalance` gives it its share)\n",
        voter_of,
        groups.len()
    ))
}

/// `cohort cluster move-replica GROUP FROM TO`: moves one replica, then
/// waits until every group matches the placement.
#[allow(clippy::too_many_arguments)]
pub async fn cluster_move_replica(
    node: &Node,
    access: &Access,
    timeout: std::time::Duration,
    group: &str,
    from: u64,
    to: u64,
    json: bool,
) -> anyhow::Result<()> {
    let group_id = parse_group(group)?;
    let started = std::time::Instant::now();
    let request = node.request(pb::MoveReplicaRequest { group_id, from_node: from, to_node: to });
    node.call(node.admin().move_replica(request)).await?;
    if !json {
        eprintln!(
            "group {group_id}: replica moving from node {from} to node {to}; waiting for the group to follow"
        );
    }
    let (_, secs) = wait_until_placed(node, access, timeout, json, started, |_| Vec::new()).await?;
    if json {
        return Out::json(&json!({ "group_id": group_id, "from": from, "to": to, "seconds": secs }));
    }
    Out::text(&format!("group {group_id}: replica moved from node {from} to node {to} in {secs:.1} s\n"))
}

/// `cohort cluster rebalance`: evens the replicas over the nodes, then
/// waits until every group matches the placement.
pub async fn cluster_rebalance(
    node: &Node,
    access: &Access,
    timeout: std::time::Duration,
    json: bool,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let reply = node.call(node.admin().rebalance(node.request(pb::RebalanceRequest {}))).await?.into_inner();
    if !json {
        eprintln!(
            "{} planned; waiting for the groups to follow",
            output::plural(reply.moves.len() as u64, "replica move", "replica moves")
        );
        for m in &reply.moves {
            eprintln!("  group {}: node {} -> node {}", m.group_id, m.from_node, m.to_node);
        }
    }
    let (groups, secs) = wait_until_placed(node, access, timeout, json, started, |_| Vec::new()).await?;
    let mut load: std::collections::BTreeMap<u64, usize> = Default::default();
    for (_, views) in groups.values() {
        for id in leader_conf(views).0 {
            *load.entry(id).or_default() += 1;
        }
    }
    if json {
        return Out::json(&json!({
            "moves": reply.moves.iter().map(|m| json!({
                "group_id": m.group_id, "from": m.from_node, "to": m.to_node,
            })).collect::<Vec<_>>(),
            "voters_per_node": load,
            "seconds": secs,
        }));
    }
    let spread: Vec<String> = load.iter().map(|(id, n)| format!("node {id}: {n}")).collect();
    Out::text(&format!(
        "{} made in {secs:.1} s; voters per node: {}\n",
        output::plural(reply.moves.len() as u64, "replica move", "replica moves"),
        spread.join(", ")
    ))
}

/// `catalog`, a shard number, or `group:N` as a Raft group id.
fn parse_group(text: &str) -> anyhow::Result<u64> {
    use crate::cluster::placement::{shard_group, CATALOG_GROUP};
    if text == "catalog" {
        return Ok(CATALOG_GROUP);
    }
    if let Some(id) = text.strip_prefix("group:") {
        return id.parse().map_err(|_| anyhow::anyhow!("{text:?}: write group:N with N a Raft group id"));
    }
    text.parse::<u32>().map(shard_group).map_err(|_| {
        anyhow::anyhow!("{text:?} is not a shard: write a shard number (0, 1, ...), `catalog`, or group:N")
    })
}

/// Waits (at most [`MEMBERSHIP_WAIT`]) until every group's configuration,
/// as its leader has it, is its placement and `also` finds nothing
/// pending; prints progress unless `json`. Returns the groups as last
/// seen and the seconds since `started`.
async fn wait_until_placed(
    node: &Node,
    access: &Access,
    timeout: std::time::Duration,
    json: bool,
    started: std::time::Instant,
    also: impl Fn(&GroupViews) -> Vec<String>,
) -> anyhow::Result<(GroupViews, f64)> {
    let deadline = started + MEMBERSHIP_WAIT;
    let mut last_line = String::new();
    loop {
        let (first, answers) = statuses(node, access, timeout).await?;
        let groups = group_views(&answers);
        let active: Vec<u64> =
            first.nodes.iter().filter(|n| n.state == "active").map(|n| n.node_id).collect();
        let mut pending = unplaced(&groups, &active);
        pending.extend(also(&groups));
        if pending.is_empty() {
            return Ok((groups, started.elapsed().as_secs_f64()));
        }
        if std::time::Instant::now() >= deadline {
            anyhow::bail!(
                "after {} s, {} still to go: {} (the change goes on; `cohort cluster status` shows it)",
                MEMBERSHIP_WAIT.as_secs(),
                pending.len(),
                pending.join("; ")
            );
        }
        let line = format!("{} to go", pending.len());
        if !json && line != last_line {
            eprintln!("  {line}");
            last_line = line;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// `cohort rejected`.
pub async fn rejected(node: &Node, limit: u32, json: bool) -> anyhow::Result<()> {
    let request = node.request(pb::ListRejectedRequest { limit });
    let reply = node.call(node.admin().list_rejected(request)).await?.into_inner();
    if json {
        return Out::json(&json!({
            "rejections": reply.rejections.iter().map(|r| json!({
                "position": r.position,
                "source": r.source,
                "received_at": r.received_at,
                "message_id": r.message_id,
                "field": r.field,
                "reason": r.reason,
            })).collect::<Vec<_>>(),
            "total": reply.total,
        }));
    }
    let mut table = Table::new(vec![
        Column::num("position"),
        Column::text("source"),
        Column::text("received_at"),
        Column::text("message_id"),
        Column::text("field"),
        Column::text("reason"),
    ]);
    for r in &reply.rejections {
        let field = if r.field.is_empty() { "(message)".to_string() } else { r.field.clone() };
        table.push(vec![
            r.position.to_string(),
            r.source.clone(),
            r.received_at.clone(),
            r.message_id.clone(),
            field,
            r.reason.clone(),
        ]);
    }
    let mut out = table.render();
    out.push_str(&format!(
        "\nlatest {} of {} rejections, newest last\n",
        output::count(reply.rejections.len() as u64),
        output::count(reply.total)
    ));
    Out::text(&out)
}

/// `cohort merges`.
pub async fn merges(node: &Node, limit: u32, json: bool) -> anyhow::Result<()> {
    let request = node.request(pb::ListMergesRequest { limit });
    let reply = node.call(node.admin().list_merges(request)).await?.into_inner();
    if json {
        return Out::json(&json!({
            "merges": reply.merges.iter().map(|m| json!({
                "into_profile": m.into_profile,
                "from_profile": m.from_profile,
                "linked_by": m.linked_by,
                "message_id": m.message_id,
                "at": m.at,
                "from_shard": m.from_shard,
                "into_shard": m.into_shard,
            })).collect::<Vec<_>>(),
            "total": reply.total,
        }));
    }
    let mut table = Table::new(vec![
        Column::num("into"),
        Column::num("from"),
        Column::text("linked_by"),
        Column::text("message_id"),
        Column::text("at"),
        Column::text("shards"),
    ]);
    for m in &reply.merges {
        table.push(vec![
            m.into_profile.to_string(),
            m.from_profile.to_string(),
            m.linked_by.clone(),
            m.message_id.clone(),
            m.at.clone(),
            format!("{} -> {}", m.from_shard, m.into_shard),
        ]);
    }
    let mut out = table.render();
    out.push_str(&format!(
        "\nlatest {} of {} merges, newest last\n",
        output::count(reply.merges.len() as u64),
        output::count(reply.total)
    ));
    Out::text(&out)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn serve_args(config: Option<PathBuf>) -> ServeArgs {
        ServeArgs {
            config,
            data_dir: None,
            grpc_addr: None,
            http_addr: None,
            shards: None,
            tls_cert: None,
            tls_key: None,
            insecure: false,
            node_id: None,
            raft_addr: None,
            peers: Vec::new(),
            join: None,
            read_staleness_ms: None,
            replication_factor: None,
            zone: None,
            shard_leaders: None,
            peer_tls_cert: None,
            peer_tls_key: None,
            peer_tls_ca: None,
            log_level: crate::cli::logs::LogLevel::default(),
        }
    }

    #[test]
    fn the_config_file_sets_fields_and_flags_override_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cohort.toml");
        std::fs::write(&path, "data_dir = \"/var/lib/cohort\"\nshards = 4\nwrite_keys = [\"k1\"]\n").unwrap();
        let config = node_config(&serve_args(Some(path.clone()))).unwrap();
        assert_eq!(config.data_dir, PathBuf::from("/var/lib/cohort"));
        assert_eq!(config.shards, 4);
        assert_eq!(config.write_keys, vec!["k1"]);
        assert_eq!(config.grpc_addr, NodeConfig::default().grpc_addr, "unset keys keep their defaults");
        let mut args = serve_args(Some(path));
        args.shards = Some(16);
        args.grpc_addr = Some("0.0.0.0:9000".into());
        let config = node_config(&args).unwrap();
        assert_eq!(config.shards, 16);
        assert_eq!(config.grpc_addr, "0.0.0.0:9000");
        assert_eq!(config.data_dir, PathBuf::from("/var/lib/cohort"));
    }

    #[test]
    fn keys_of_the_file_and_the_environment_are_merged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cohort.toml");
        std::fs::write(&path, "insecure = true\n[[api_keys]]\nkey = \"f1\"\nrole = \"admin\"\n").unwrap();
        let mut config = node_config(&serve_args(Some(path.clone()))).unwrap();
        assert!(config.insecure);
        add_env_keys(&mut config, Some("e1:read, e2:ingest")).unwrap();
        let keys: Vec<(&str, crate::node::Role)> =
            config.api_keys.iter().map(|k| (k.key.as_str(), k.role)).collect();
        use crate::node::Role;
        assert_eq!(keys, vec![("f1", Role::Admin), ("e1", Role::Read), ("e2", Role::Ingest)]);
        assert!(!format!("{config:?}").contains("f1"), "Debug hides the keys");
        let err = add_env_keys(&mut config, Some("e3:writer")).unwrap_err().to_string();
        assert!(err.contains("COHORT_API_KEYS") && err.contains("writer") && !err.contains("e3"), "{err}");
        std::fs::write(&path, "[[api_keys]]\nkey = \"f1\"\nrole = \"owner\"\n").unwrap();
        let err = format!("{:#}", node_config(&serve_args(Some(path))).unwrap_err());
        assert!(err.contains("owner") && err.contains("`ingest`, `read`, `admin`"), "{err}");
    }

    #[test]
    fn tls_flags_override_the_file() {
        let mut args = serve_args(None);
        args.tls_cert = Some("c.pem".into());
        args.tls_key = Some("k.pem".into());
        args.insecure = true;
        let config = node_config(&args).unwrap();
        assert_eq!(config.tls_cert.as_deref(), Some(Path::new("c.pem")));
        assert_eq!(config.tls_key.as_deref(), Some(Path::new("k.pem")));
        assert!(config.insecure);
    }

    #[test]
    fn without_a_file_the_defaults_apply() {
        let config = node_config(&serve_args(None)).unwrap();
        assert_eq!(config.data_dir, PathBuf::from("cohort-data"));
    }

    #[test]
    fn unknown_keys_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "shard = 4\n").unwrap();
        let err = format!("{:#}", node_config(&serve_args(Some(path))).unwrap_err());
        assert!(err.contains("bad.toml is not a valid configuration") && err.contains("shard"), "{err}");
        let err = format!("{:#}", node_config(&serve_args(Some(dir.path().join("none.toml")))).unwrap_err());
        assert!(err.contains("cannot read the configuration"), "{err}");
    }

    #[test]
    fn many_anonymous_ids_are_summarised() {
        let ids: Vec<String> = (1..=5).map(|i| format!("a{i}")).collect();
        assert_eq!(anonymous_cell(&ids[..2]), "a1, a2");
        assert_eq!(anonymous_cell(&ids), "a1, a2, a3 (+2)");
    }

    fn view(
        group: u64,
        voters: &[u64],
        learners: &[u64],
        placed: &[u64],
        leader: u64,
    ) -> (u64, pb::GroupStatus) {
        (
            leader,
            pb::GroupStatus {
                group_id: group,
                name: if group == 1 { "catalog".into() } else { format!("shard {}", group - 2) },
                leader_id: leader,
                term: 2,
                voters: voters.to_vec(),
                learners: learners.to_vec(),
                placed: placed.to_vec(),
                ..Default::default()
            },
        )
    }

    #[test]
    fn a_group_is_placed_when_its_leaders_configuration_is_its_placement() {
        let mut groups = GroupViews::default();
        groups.insert(1, ("catalog".into(), vec![view(1, &[1, 2, 3], &[4], &[1, 2, 3], 1)]));
        groups.insert(2, ("shard 0".into(), vec![view(2, &[1, 2, 3], &[], &[1, 2, 3], 2)]));
        assert!(unplaced(&groups, &[1, 2, 3, 4]).is_empty());
        // A move under way: the leader's view has the learner, and a node
        // outside the group reports an empty configuration that does not
        // count.
        groups.insert(
            3,
            (
                "shard 1".into(),
                vec![view(3, &[1, 2, 3], &[4], &[1, 2, 4], 3), view(3, &[], &[], &[1, 2, 4], 0)],
            ),
        );
        let pending = unplaced(&groups, &[1, 2, 3, 4]);
        assert_eq!(pending.len(), 1, "{pending:?}");
        assert!(pending[0].starts_with("shard 1 has [1, 2, 3]+[4], wants [1, 2, 4]"), "{pending:?}");
        // The catalog misses its learner.
        groups.insert(1, ("catalog".into(), vec![view(1, &[1, 2, 3], &[], &[1, 2, 3], 1)]));
        assert_eq!(unplaced(&groups, &[1, 2, 3, 4]).len(), 2);
    }

    #[test]
    fn a_shard_is_named_by_number_catalog_or_group_id() {
        assert_eq!(parse_group("catalog").unwrap(), 1);
        assert_eq!(parse_group("0").unwrap(), 2);
        assert_eq!(parse_group("group:5").unwrap(), 5);
        let e = parse_group("shard-x").unwrap_err().to_string();
        assert!(e.contains("is not a shard"), "{e}");
    }
}
