//! The schema: the type of every trait and of every event's properties,
//! declared by an operator or inferred from the first value seen.
//!
//! Reserved names (`user_id`, `anonymous_id`, `first_seen`, `last_seen`)
//! are maintained by the database and cannot be declared or written.
//!
//! Every name costs memory in the catalog and in each shard, and the
//! schema is sent to clients, so its growth is capped by [`SchemaLimits`]:
//! a new name over a cap is refused with the cap's name and value, while
//! names already in the schema stay usable. [`Schema::page`] reads the
//! schema in bounded pages.

use std::collections::BTreeMap;

use super::{ModelError, TraitType, Value};

/// The name of the list trait that `group` messages grow (INGEST.md): a set
/// that only grows, and that a merge unions.
pub const GROUPS_TRAIT: &str = "groups";

/// Names the database maintains itself.
pub const RESERVED_NAMES: [&str; 4] = ["user_id", "anonymous_id", "first_seen", "last_seen"];

/// The two kinds of identifier a profile can be addressed by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum IdentifierKind {
    /// `userId`: at most one per profile.
    UserId,
    /// `anonymousId`: any number per profile.
    AnonymousId,
}

impl IdentifierKind {
    /// The name used in segments and in `kind:value` addresses.
    pub fn name(self) -> &'static str {
        match self {
            IdentifierKind::UserId => "user_id",
            IdentifierKind::AnonymousId => "anonymous_id",
        }
    }
}

/// What a name in a segment refers to, with its type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldType {
    /// A trait of the given type (`first_seen` and `last_seen` are
    /// timestamp traits maintained by the database).
    Trait(TraitType),
    /// An identifier: `=`, `!=`, `IN`, `NOT IN`, `EXISTS`.
    Identifier(IdentifierKind),
}

/// Caps on the schema's growth, checked when a name is new (at typing, in
/// the catalog's log order, so that every replica and every replay decides
/// alike: the caps in force are part of the catalog's replicated state).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SchemaLimits {
    /// Most traits (`max_traits`).
    pub max_traits: usize,
    /// Most event names (`max_events`).
    pub max_events: usize,
    /// Most properties of one event (`max_properties_per_event`).
    pub max_properties_per_event: usize,
    /// Most properties of all events together (`max_properties`).
    pub max_properties: usize,
    /// Longest new trait, event or property name, in bytes
    /// (`max_name_bytes`).
    pub max_name_bytes: usize,
}

/// The defaults are the caps of a catalog before any
/// [`SetLimits`](crate::cluster::catalog::CatalogCommand::SetLimits) entry,
/// so a log replayed from its start types its first entries under them:
/// changing them changes how an old log without such an entry replays.
impl Default for SchemaLimits {
    fn default() -> Self {
        SchemaLimits {
            max_traits: 10_000,
            max_events: 10_000,
            max_properties_per_event: 1_000,
            max_properties: 100_000,
            max_name_bytes: 1_024,
        }
    }
}

/// Longest name quoted in a cap's rejection (characters).
const MAX_QUOTED_NAME_CHARS: usize = 64;

/// `name` in backticks, cut to [`MAX_QUOTED_NAME_CHARS`] characters.
fn quoted(name: &str) -> String {
    if name.chars().count() <= MAX_QUOTED_NAME_CHARS {
        format!("`{name}`")
    } else {
        format!("`{}…`", name.chars().take(MAX_QUOTED_NAME_CHARS).collect::<String>())
    }
}

/// The refusal of a new name over `cap`.
fn over_cap(what: String, problem: String, cap: &'static str, value: usize) -> ModelError {
    ModelError::OverCap { what, problem, cap, value }
}

/// Checks a new name's length against `max_name_bytes`.
fn check_name(what: &dyn Fn() -> String, name: &str, limits: &SchemaLimits) -> Result<(), ModelError> {
    if name.len() > limits.max_name_bytes {
        return Err(over_cap(
            what(),
            format!("its name is {} bytes long", name.len()),
            "max_name_bytes",
            limits.max_name_bytes,
        ));
    }
    Ok(())
}

/// The types of traits and event properties.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(from = "SchemaFields")]
pub struct Schema {
    traits: BTreeMap<String, TraitType>,
    events: BTreeMap<String, BTreeMap<String, TraitType>>,
    /// Properties of all events together (derived from `events`, kept so
    /// that the `max_properties` cap costs nothing to check).
    #[serde(skip)]
    property_count: usize,
}

/// [`Schema`] as it is serialized: the same fields, without the derived
/// count (so that the encoding is unchanged).
#[derive(serde::Deserialize)]
struct SchemaFields {
    traits: BTreeMap<String, TraitType>,
    events: BTreeMap<String, BTreeMap<String, TraitType>>,
}

impl From<SchemaFields> for Schema {
    fn from(f: SchemaFields) -> Schema {
        let property_count = f.events.values().map(BTreeMap::len).sum();
        Schema { traits: f.traits, events: f.events, property_count }
    }
}

impl Schema {
    /// An empty schema.
    pub fn new() -> Self {
        Schema::default()
    }

    /// What `name` refers to in a segment, if anything.
    pub fn field(&self, name: &str) -> Option<FieldType> {
        match name {
            "user_id" => Some(FieldType::Identifier(IdentifierKind::UserId)),
            "anonymous_id" => Some(FieldType::Identifier(IdentifierKind::AnonymousId)),
            "first_seen" | "last_seen" => Some(FieldType::Trait(TraitType::Timestamp)),
            _ => self.traits.get(name).copied().map(FieldType::Trait),
        }
    }

    /// The type of a stored trait (not the reserved names).
    pub fn trait_type(&self, name: &str) -> Option<TraitType> {
        self.traits.get(name).copied()
    }

    /// The type of a property of an event, if the event has been seen with it.
    pub fn property_type(&self, event: &str, property: &str) -> Option<TraitType> {
        self.events.get(event)?.get(property).copied()
    }

    /// True when some event of this name has been recorded or declared.
    pub fn has_event(&self, event: &str) -> bool {
        self.events.contains_key(event)
    }

    /// Every trait and its type, by name.
    pub fn traits(&self) -> impl Iterator<Item = (&str, TraitType)> {
        self.traits.iter().map(|(k, v)| (k.as_str(), *v))
    }

    /// Every event and its properties' types, by name.
    pub fn events(&self) -> impl Iterator<Item = (&str, &BTreeMap<String, TraitType>)> {
        self.events.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// How many traits (not counting the reserved names).
    pub fn trait_count(&self) -> usize {
        self.traits.len()
    }

    /// How many event names.
    pub fn event_count(&self) -> usize {
        self.events.len()
    }

    /// How many properties, all events together.
    pub fn property_count(&self) -> usize {
        self.property_count
    }

    /// Whether a trait `name` may be added (always, when it exists).
    pub fn admit_trait(&self, name: &str, limits: &SchemaLimits) -> Result<(), ModelError> {
        if self.traits.contains_key(name) {
            return Ok(());
        }
        let what = || format!("new trait {}", quoted(name));
        check_name(&what, name, limits)?;
        if self.traits.len() >= limits.max_traits {
            return Err(over_cap(
                what(),
                format!("the schema holds {} traits", self.traits.len()),
                "max_traits",
                limits.max_traits,
            ));
        }
        Ok(())
    }

    /// Whether an event `name` may be recorded (always, when it exists).
    pub fn admit_event(&self, name: &str, limits: &SchemaLimits) -> Result<(), ModelError> {
        if self.events.contains_key(name) {
            return Ok(());
        }
        let what = || format!("new event {}", quoted(name));
        check_name(&what, name, limits)?;
        if self.events.len() >= limits.max_events {
            return Err(over_cap(
                what(),
                format!("the schema holds {} event names", self.events.len()),
                "max_events",
                limits.max_events,
            ));
        }
        Ok(())
    }

    /// Whether property `name` may be added to `event` (always, when it
    /// exists).
    pub fn admit_property(&self, event: &str, name: &str, limits: &SchemaLimits) -> Result<(), ModelError> {
        let props = self.events.get(event);
        if props.is_some_and(|p| p.contains_key(name)) {
            return Ok(());
        }
        let what = || format!("new property {} of event {}", quoted(name), quoted(event));
        check_name(&what, name, limits)?;
        let of_event = props.map_or(0, BTreeMap::len);
        if of_event >= limits.max_properties_per_event {
            return Err(over_cap(
                what(),
                format!("the event has {of_event} properties"),
                "max_properties_per_event",
                limits.max_properties_per_event,
            ));
        }
        if self.property_count >= limits.max_properties {
            return Err(over_cap(
                what(),
                format!("the events have {} properties together", self.property_count),
                "max_properties",
                limits.max_properties,
            ));
        }
        Ok(())
    }

    /// Declares a trait's type. Declaring the type already in force is a
    /// no-op; a different type is a conflict (changing a type would silently
    /// reinterpret stored data).
    pub fn declare_trait(&mut self, name: &str, ty: TraitType) -> Result<(), ModelError> {
        if RESERVED_NAMES.contains(&name) {
            return Err(ModelError::Reserved { name: name.to_string() });
        }
        declare(&mut self.traits, name, ty)
    }

    /// Declares an event (with no properties yet).
    pub fn declare_event(&mut self, event: &str) {
        self.event_mut(event);
    }

    /// The property types of `event`, created empty when new (the name is
    /// copied only then).
    fn event_mut(&mut self, event: &str) -> &mut BTreeMap<String, TraitType> {
        if !self.events.contains_key(event) {
            self.events.insert(event.to_string(), BTreeMap::new());
        }
        self.events.get_mut(event).expect("inserted above")
    }

    /// Declares the type of an event's property.
    pub fn declare_property(&mut self, event: &str, property: &str, ty: TraitType) -> Result<(), ModelError> {
        let props = self.events.entry(event.to_string()).or_default();
        let before = props.len();
        let result = declare(props, property, ty);
        self.property_count += props.len() - before;
        result
    }

    /// Coerces a trait's JSON value, inferring and recording the trait's type
    /// when it is new (within `limits`). `Ok(None)` is `null` (unset).
    pub fn coerce_trait(
        &mut self,
        name: &str,
        json: &serde_json::Value,
        limits: &SchemaLimits,
    ) -> Result<Option<Value>, ModelError> {
        if RESERVED_NAMES.contains(&name) {
            return Err(ModelError::Reserved { name: name.to_string() });
        }
        if !json.is_null() {
            // `null` unsets and records nothing, so it needs no room.
            self.admit_trait(name, limits)?;
        }
        coerce(&mut self.traits, name, json)
    }

    /// Coerces an event property's JSON value, inferring its type per event
    /// name when it is new (within `limits`; the event must have been
    /// admitted, see [`Schema::admit_event`]).
    pub fn coerce_property(
        &mut self,
        event: &str,
        name: &str,
        json: &serde_json::Value,
        limits: &SchemaLimits,
    ) -> Result<Option<Value>, ModelError> {
        if !json.is_null() {
            self.admit_property(event, name, limits)?;
        }
        let props = self.event_mut(event);
        let before = props.len();
        let result = coerce(props, name, json);
        let added = props.len() - before;
        self.property_count += added;
        result
    }

    /// Adds every declaration of `other` that this schema does not have,
    /// and reports the first conflict.
    pub fn merge_from(&mut self, other: &Schema) -> Result<(), ModelError> {
        for (name, ty) in other.traits() {
            declare(&mut self.traits, name, ty)?;
        }
        for (event, props) in other.events() {
            for (name, ty) in props {
                self.declare_property(event, name, *ty)?;
            }
            self.declare_event(event);
        }
        Ok(())
    }

    /// A page of the schema for clients: the traits, then each event
    /// followed by its properties, all by name, restricted to trait and
    /// event names that start with `prefix`, from `from` (the start when
    /// `None`). A page holds at most `limit` entries (a trait, an event, a
    /// property) and about `max_bytes` of names, and at least one entry,
    /// so that paging always advances. An event whose properties do not
    /// fit is continued at the start of the next page under its name again.
    pub fn page(
        &self,
        prefix: &str,
        from: Option<&SchemaCursor>,
        limit: usize,
        max_bytes: usize,
    ) -> SchemaPage<'_> {
        let mut page = SchemaPage::default();
        let (mut entries, mut bytes) = (0usize, 0usize);
        // An entry of `len` name bytes fits while both budgets allow, and
        // the first one always does.
        let mut fits = |len: usize| {
            let cost = len + ENTRY_OVERHEAD_BYTES;
            if entries > 0 && (entries >= limit || bytes + cost > max_bytes) {
                return false;
            }
            entries += 1;
            bytes += cost;
            true
        };
        let starts = |name: &&String| name.starts_with(prefix);
        let (trait_from, event_from, property_from) = match from {
            None => (Some(prefix.to_string()), prefix.to_string(), None),
            Some(SchemaCursor::Trait(t)) => {
                (Some(t.clone().max(prefix.to_string())), prefix.to_string(), None)
            }
            Some(SchemaCursor::Event(e)) => (None, e.clone().max(prefix.to_string()), None),
            Some(SchemaCursor::Property(e, p)) => (None, e.clone().max(prefix.to_string()), Some(p.as_str())),
        };
        if let Some(t) = trait_from {
            for (name, ty) in self.traits.range(t..).take_while(|(n, _)| starts(n)) {
                if !fits(name.len()) {
                    page.next = Some(SchemaCursor::Trait(name.clone()));
                    return page;
                }
                page.traits.push((name, *ty));
            }
        }
        for (event, props) in self.events.range(event_from.clone()..).take_while(|(n, _)| starts(n)) {
            // Continuing an event: its properties from the cursor on, under
            // a header that is not a new entry.
            let continued = property_from.filter(|_| *event == event_from);
            if continued.is_none() && !fits(event.len()) {
                page.next = Some(SchemaCursor::Event(event.clone()));
                return page;
            }
            let mut listed = Vec::new();
            let range = props.range(continued.unwrap_or("").to_string()..);
            for (name, ty) in range {
                if !fits(name.len()) {
                    page.events.push((event, listed));
                    page.next = Some(SchemaCursor::Property(event.clone(), name.clone()));
                    return page;
                }
                listed.push((name.as_str(), *ty));
            }
            page.events.push((event, listed));
        }
        page
    }
}

/// Bytes a page entry costs besides its name (type, flags, framing).
const ENTRY_OVERHEAD_BYTES: usize = 16;

/// Where a page of the schema starts: at a trait, at an event (with its
/// first property), or at a property of an event. Clients see it as an
/// opaque token ([`SchemaCursor::to_token`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SchemaCursor {
    /// The first trait at or after this name.
    Trait(String),
    /// The first event at or after this name.
    Event(String),
    /// This event's properties from this name on, then the next events.
    Property(String, String),
}

impl SchemaCursor {
    /// The cursor as a page token: its JSON in hexadecimal, so that it is
    /// plain ASCII whatever the names hold.
    pub fn to_token(&self) -> String {
        let json = serde_json::to_string(self).unwrap_or_default();
        json.bytes().map(|b| format!("{b:02x}")).collect()
    }

    /// The cursor of a page token, or `None` when the token is not one
    /// [`SchemaCursor::to_token`] made.
    pub fn from_token(token: &str) -> Option<SchemaCursor> {
        if token.len() % 2 != 0 || !token.is_ascii() {
            return None;
        }
        let bytes: Option<Vec<u8>> =
            (0..token.len()).step_by(2).map(|i| u8::from_str_radix(&token[i..i + 2], 16).ok()).collect();
        serde_json::from_slice(&bytes?).ok()
    }
}

/// One page of the schema ([`Schema::page`]).
#[derive(Debug, Default, PartialEq)]
pub struct SchemaPage<'a> {
    /// Traits and their types, by name.
    pub traits: Vec<(&'a str, TraitType)>,
    /// Events and (some of) their properties, by name.
    pub events: Vec<(&'a str, Vec<(&'a str, TraitType)>)>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<SchemaCursor>,
}

fn declare(map: &mut BTreeMap<String, TraitType>, name: &str, ty: TraitType) -> Result<(), ModelError> {
    match map.get(name) {
        Some(existing) if *existing != ty => {
            Err(ModelError::Conflict { name: name.to_string(), existing: *existing, requested: ty })
        }
        Some(_) => Ok(()),
        None => {
            map.insert(name.to_string(), ty);
            Ok(())
        }
    }
}

fn coerce(
    map: &mut BTreeMap<String, TraitType>,
    name: &str,
    json: &serde_json::Value,
) -> Result<Option<Value>, ModelError> {
    if json.is_null() {
        return Ok(None);
    }
    let ty = match map.get(name) {
        Some(ty) => *ty,
        None => {
            let ty = TraitType::infer(json).ok_or_else(|| ModelError::Unsupported {
                name: name.to_string(),
                reason: match json {
                    serde_json::Value::Array(_) => {
                        "an array that is not all strings cannot be a trait".to_string()
                    }
                    _ => "objects are flattened before typing".to_string(),
                },
            })?;
            // Record the type only once the value is known to fit it.
            let value = Value::from_json(name, ty, json)?;
            map.insert(name.to_string(), ty);
            return Ok(value);
        }
    };
    Value::from_json(name, ty, json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn infers_then_enforces() {
        let mut s = Schema::new();
        assert_eq!(
            s.coerce_trait("age", &json!(30), &SchemaLimits::default()).unwrap(),
            Some(Value::Number(30.0))
        );
        assert_eq!(s.trait_type("age"), Some(TraitType::Number));
        let err = s.coerce_trait("age", &json!("forty"), &SchemaLimits::default()).unwrap_err();
        assert!(err.to_string().contains("`age` is number"), "{err}");
        assert_eq!(s.coerce_trait("age", &json!(null), &SchemaLimits::default()).unwrap(), None);
    }

    #[test]
    fn declared_types_win_and_conflicts_are_refused() {
        let mut s = Schema::new();
        s.declare_trait("signup_at", TraitType::Timestamp).unwrap();
        assert_eq!(
            s.coerce_trait("signup_at", &json!("1970-01-01T00:00:00.002Z"), &SchemaLimits::default())
                .unwrap(),
            Some(Value::Timestamp(2))
        );
        assert!(matches!(s.declare_trait("signup_at", TraitType::Number), Err(ModelError::Conflict { .. })));
        assert!(matches!(s.declare_trait("user_id", TraitType::Text), Err(ModelError::Reserved { .. })));
    }

    #[test]
    fn reserved_fields_resolve() {
        let s = Schema::new();
        assert_eq!(s.field("user_id"), Some(FieldType::Identifier(IdentifierKind::UserId)));
        assert_eq!(s.field("last_seen"), Some(FieldType::Trait(TraitType::Timestamp)));
        assert_eq!(s.field("nope"), None);
    }

    #[test]
    fn bad_arrays_do_not_create_a_type() {
        let mut s = Schema::new();
        assert!(s.coerce_trait("xs", &json!([1, 2]), &SchemaLimits::default()).is_err());
        assert_eq!(s.trait_type("xs"), None);
    }

    fn small_limits() -> SchemaLimits {
        SchemaLimits {
            max_traits: 2,
            max_events: 1,
            max_properties_per_event: 2,
            max_properties: 3,
            max_name_bytes: 8,
        }
    }

    #[test]
    fn caps_refuse_new_names_only_and_name_the_cap() {
        let l = small_limits();
        let mut s = Schema::new();
        s.coerce_trait("a", &json!(1), &l).unwrap();
        s.coerce_trait("b", &json!(1), &l).unwrap();
        let e = s.coerce_trait("c", &json!(1), &l).unwrap_err().to_string();
        assert!(e.contains("`max_traits` is 2") && e.contains("new trait `c`"), "{e}");
        assert_eq!(s.trait_type("c"), None);
        // Known names and nulls need no room.
        assert!(s.coerce_trait("a", &json!(2), &l).is_ok());
        assert_eq!(s.coerce_trait("c", &json!(null), &l), Ok(None));
        let e = s.admit_trait("ninebytes", &SchemaLimits { max_traits: 10, ..l }).unwrap_err().to_string();
        assert!(e.contains("9 bytes long") && e.contains("`max_name_bytes` is 8"), "{e}");

        assert!(s.admit_event("buy", &l).is_ok());
        s.declare_event("buy");
        let e = s.admit_event("view", &l).unwrap_err().to_string();
        assert!(e.contains("`max_events` is 1"), "{e}");
        s.coerce_property("buy", "p1", &json!(1), &l).unwrap();
        s.coerce_property("buy", "p2", &json!(1), &l).unwrap();
        let e = s.coerce_property("buy", "p3", &json!(1), &l).unwrap_err().to_string();
        assert!(e.contains("`max_properties_per_event` is 2") && e.contains("of event `buy`"), "{e}");
        let wide = SchemaLimits { max_events: 5, ..l };
        s.declare_event("view");
        s.coerce_property("view", "q1", &json!(1), &wide).unwrap();
        let e = s.coerce_property("view", "q2", &json!(1), &wide).unwrap_err().to_string();
        assert!(e.contains("`max_properties` is 3") && e.contains("3 properties together"), "{e}");
        assert_eq!(s.property_count(), 3);
    }

    #[test]
    fn the_property_count_survives_serialization_and_merges() {
        let mut s = Schema::new();
        s.declare_property("e", "a", TraitType::Number).unwrap();
        s.declare_property("e", "a", TraitType::Number).unwrap();
        s.declare_property("f", "b", TraitType::Keyword).unwrap();
        assert_eq!(s.property_count(), 2);
        let bytes = bincode::serde::encode_to_vec(&s, bincode::config::standard()).unwrap();
        let (back, _): (Schema, usize) =
            bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).unwrap();
        assert_eq!((back.property_count(), &back), (2, &s));
        let mut m = Schema::new();
        m.merge_from(&s).unwrap();
        assert_eq!(m.property_count(), 2);
    }

    /// A schema of `traits` traits and `events` events with `props`
    /// properties each, names of varied lengths.
    fn wide_schema(traits: usize, events: usize, props: usize) -> Schema {
        let mut s = Schema::new();
        for t in 0..traits {
            s.declare_trait(&format!("t{t}{}", "x".repeat(t % 7)), TraitType::Number).unwrap();
        }
        for e in 0..events {
            let event = format!("e{e}");
            s.declare_event(&event);
            for p in 0..props {
                s.declare_property(&event, &format!("p{p}{}", "y".repeat(p % 5)), TraitType::Keyword)
                    .unwrap();
            }
        }
        s
    }

    /// Traits by name, as a test reads them back.
    type Traits = Vec<(String, TraitType)>;
    /// Events with their properties, as a test reads them back.
    type Events = Vec<(String, Vec<(String, TraitType)>)>;

    /// Every page from the start to the last, joined as a client does.
    fn read_all(s: &Schema, prefix: &str, limit: usize, max_bytes: usize) -> (Traits, Events, usize) {
        let (mut traits, mut events): (Traits, Events) = (Vec::new(), Vec::new());
        let mut from: Option<SchemaCursor> = None;
        for pages in 1..=100_000 {
            let page = s.page(prefix, from.as_ref(), limit, max_bytes);
            let new_entries = page.traits.len()
                + page.events.iter().map(|(_, p)| p.len()).sum::<usize>()
                + page.events.iter().filter(|(e, _)| events.last().is_none_or(|(l, _)| l != e)).count();
            assert!(new_entries >= 1 && new_entries <= limit.max(1), "page {pages}: {new_entries} entries");
            traits.extend(page.traits.iter().map(|(n, t)| (n.to_string(), *t)));
            for (e, props) in page.events {
                let props: Vec<(String, TraitType)> =
                    props.iter().map(|(n, t)| (n.to_string(), *t)).collect();
                match events.last_mut() {
                    Some((last, have)) if last == e => have.extend(props),
                    _ => events.push((e.to_string(), props)),
                }
            }
            // The token stands for the cursor.
            from = page.next.map(|c| SchemaCursor::from_token(&c.to_token()).unwrap());
            if from.is_none() {
                return (traits, events, pages);
            }
        }
        panic!("paging did not end");
    }

    #[test]
    fn pages_cover_the_schema_once_in_order_within_their_budgets() {
        let s = wide_schema(23, 5, 9);
        let want_traits: Traits = s.traits().map(|(n, t)| (n.to_string(), t)).collect();
        let want_events: Events = s
            .events()
            .map(|(e, p)| (e.to_string(), p.iter().map(|(n, t)| (n.clone(), *t)).collect()))
            .collect();
        for (limit, max_bytes) in
            [(1, 1 << 20), (2, 1 << 20), (7, 1 << 20), (1000, 1 << 20), (1000, 40), (3, 1)]
        {
            let (traits, events, pages) = read_all(&s, "", limit, max_bytes);
            assert_eq!(traits, want_traits, "limit {limit}, {max_bytes} bytes");
            assert_eq!(events, want_events, "limit {limit}, {max_bytes} bytes");
            if limit == 1 {
                assert_eq!(pages, 23 + 5 + 5 * 9, "one entry a page");
            }
        }
        // A prefix selects traits and events by name, with all their properties.
        let (traits, events, _) = read_all(&s, "t1", 4, 1 << 20);
        assert!(traits.iter().all(|(n, _)| n.starts_with("t1")) && traits.len() == 11, "{traits:?}");
        assert!(events.is_empty());
        let (traits, events, _) = read_all(&s, "e3", 4, 1 << 20);
        assert_eq!((traits.len(), events.len(), events[0].1.len()), (0, 1, 9));
        // A token that is not one the node made is refused.
        assert_eq!(SchemaCursor::from_token("zz"), None);
        assert_eq!(SchemaCursor::from_token("7b7d"), None);
    }

    #[test]
    fn a_page_of_200k_names_stays_under_its_byte_budget() {
        let s = wide_schema(200_000, 0, 0);
        let page = s.page("", None, 10_000, 1 << 20);
        let bytes: usize = page.traits.iter().map(|(n, _)| n.len() + ENTRY_OVERHEAD_BYTES).sum();
        assert!(
            page.traits.len() == 10_000 && bytes <= 1 << 20,
            "{} traits, {bytes} bytes",
            page.traits.len()
        );
        let long = Schema::from(SchemaFields {
            traits: (0..5_000).map(|i| (format!("{i:04}{}", "n".repeat(1_000)), TraitType::Text)).collect(),
            events: BTreeMap::new(),
        });
        let page = long.page("", None, 10_000, 1 << 20);
        assert!(page.traits.len() < 1_100 && page.next.is_some(), "{}", page.traits.len());
    }
}
