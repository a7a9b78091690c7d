//! Segment Spec messages: the one model behind every door (gRPC batches, the
//! Segment-compatible HTTP endpoint, NDJSON files).
//!
//! [`Message::from_json`] reads one message, checks the rules of
//! `shared/INGEST.md` that concern a message on its own, and normalises it:
//!
//! - `type` is one of identify, track, page, screen, group, alias;
//! - `userId` or `anonymousId` is present, a non-empty string of at most 256
//!   bytes (alias: `userId` and `previousId`); track needs `event`, group
//!   needs `groupId`;
//! - the message time is `timestamp`, else `receivedAt - (sentAt -
//!   originalTimestamp)` when both are present, else the time the server
//!   received it; RFC 3339 with `Z` or an offset, with or without fractions;
//!   however it is derived, it must lie in the years 0000 to 9999 in UTC
//!   (`model::MIN_TIME_MS` to `model::MAX_TIME_MS`), else the message is
//!   refused;
//! - `traits` (and `context.traits`, on any message) and `properties` are
//!   flattened with dots (`{"address": {"city": "Lyon"}}` → `address.city`);
//!   page and screen add `name` and `category` to the properties. When two
//!   values land on one name, one is kept by a fixed rule (`traits` over
//!   `context.traits`, a page's `name` over `properties.name`, a dotted key
//!   over its nested spelling) and the other, when it differs, is reported
//!   as a field rejection; a value under the empty name, which no query
//!   can name, is refused the same way.
//!
//! A message that breaks a rule is a [`MessageError`] naming the field; a
//! field that cannot be stored (an array that is not all strings) is dropped
//! and reported in [`Message::field_errors`] while the rest of the message
//! stands. Typing values against the schema happens later, at ingestion.

use serde_json::{Map, Value as Json};
use thiserror::Error;

use super::{
    describe_time_ms, is_rfc3339, parse_rfc3339_ms, time_in_range, ModelError, Schema, SchemaLimits,
    TraitType, Value, GROUPS_TRAIT,
};

/// Longest identifier accepted, in bytes.
pub const MAX_ID_BYTES: usize = 256;

/// The six Segment Spec message types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// Resolves identity, then sets traits.
    Identify,
    /// Records an event.
    Track,
    /// Records a `page` event.
    Page,
    /// Records a `screen` event.
    Screen,
    /// Adds `groupId` to the `groups` list trait.
    Group,
    /// Links `previousId` to `userId`.
    Alias,
}

impl MessageType {
    /// The type as written in messages.
    pub fn name(self) -> &'static str {
        match self {
            MessageType::Identify => "identify",
            MessageType::Track => "track",
            MessageType::Page => "page",
            MessageType::Screen => "screen",
            MessageType::Group => "group",
            MessageType::Alias => "alias",
        }
    }

    /// The type named `name` (case-sensitive, as the spec writes them).
    pub fn parse(name: &str) -> Option<MessageType> {
        [
            MessageType::Identify,
            MessageType::Track,
            MessageType::Page,
            MessageType::Screen,
            MessageType::Group,
            MessageType::Alias,
        ]
        .into_iter()
        .find(|t| t.name() == name)
    }
}

/// A message refused as a whole, with the field at fault.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum MessageError {
    /// Not a JSON object.
    #[error("a message must be a JSON object, found {0}")]
    NotAnObject(String),
    /// `type` missing or not one of the six.
    #[error("`type` must be one of identify, track, page, screen, group, alias; found {0}")]
    BadType(String),
    /// Neither `userId` nor `anonymousId`.
    #[error("a message needs `userId` or `anonymousId`")]
    NoIdentifier,
    /// An identifier that is not a non-empty string of at most 256 bytes.
    #[error("`{field}` must be a non-empty string of at most 256 bytes: {problem}")]
    BadIdentifier {
        /// The field (`userId`, `anonymousId`, `previousId`, `groupId`).
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// A field the message type requires.
    #[error("{kind} messages need `{field}`")]
    Missing {
        /// The message type.
        kind: &'static str,
        /// The missing field.
        field: &'static str,
    },
    /// A field of the wrong JSON type.
    #[error("`{field}` must be {expected}")]
    WrongType {
        /// The field.
        field: &'static str,
        /// What it must be.
        expected: &'static str,
    },
    /// A time field that is not RFC 3339.
    #[error("`{field}` is not an RFC 3339 timestamp: {value:?}")]
    BadTime {
        /// The field.
        field: &'static str,
        /// The text found.
        value: String,
    },
    /// A message time outside the years 0000 to 9999 (UTC), whether given
    /// (`timestamp`, `receivedAt`) or derived from `sentAt` and
    /// `originalTimestamp`: one range for every way of giving the time.
    #[error("`{field}` gives {found}, outside the range of message times ({range})", range = super::TIME_RANGE)]
    TimeOutOfRange {
        /// The field, or the formula the time was derived by.
        field: &'static str,
        /// What it gives, in words.
        found: String,
    },
}

/// A field dropped from an otherwise valid message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// The flattened field name (`traits.scores`, `properties.items`).
    pub field: String,
    /// Why it was dropped.
    pub reason: String,
}

/// One message, checked and normalised.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    /// The message type.
    pub kind: MessageType,
    /// `messageId`, for deduplication.
    pub message_id: Option<String>,
    /// `userId` (for alias, the new id).
    pub user_id: Option<String>,
    /// `anonymousId` (for alias, `previousId`).
    pub anonymous_id: Option<String>,
    /// The event name: `event` for track, `page` or `screen` for those.
    pub event: Option<String>,
    /// `groupId` of a group message.
    pub group_id: Option<String>,
    /// The message time, milliseconds since the epoch.
    pub time_ms: i64,
    /// Traits to set, flattened, in message order (`context.traits` first,
    /// so that `traits` win over them), `null` meaning unset.
    pub traits: Vec<(String, Json)>,
    /// Event properties, flattened.
    pub properties: Vec<(String, Json)>,
    /// Fields dropped from the message, with why.
    pub field_errors: Vec<FieldError>,
}

fn describe(v: &Json) -> String {
    match v {
        Json::Null => "null".to_string(),
        Json::Bool(_) => "a bool".to_string(),
        Json::Number(_) => "a number".to_string(),
        Json::String(s) => format!("the string {s:?}"),
        Json::Array(_) => "an array".to_string(),
        Json::Object(_) => "an object".to_string(),
    }
}

/// The fields of a message that Cohort reads, each as found. Built either
/// straight from the text ([`Message::parse`]: other fields are skipped
/// without being built) or from a parsed JSON object
/// ([`Message::from_json`]); both then go through [`Message::from_fields`],
/// so they accept, refuse and normalise alike.
#[derive(Debug, Default)]
struct Fields {
    kind: Option<Json>,
    message_id: Option<Json>,
    user_id: Option<Json>,
    anonymous_id: Option<Json>,
    previous_id: Option<Json>,
    group_id: Option<Json>,
    event: Option<Json>,
    name: Option<Json>,
    category: Option<Json>,
    timestamp: Option<Json>,
    sent_at: Option<Json>,
    original_timestamp: Option<Json>,
    received_at: Option<Json>,
    traits: Option<Json>,
    properties: Option<Json>,
    /// `context`: an object is kept with its `traits` member only.
    context: Option<Json>,
}

/// The top-level keys a message is read for.
#[derive(Clone, Copy)]
enum Key {
    Type,
    MessageId,
    UserId,
    AnonymousId,
    PreviousId,
    GroupId,
    Event,
    Name,
    Category,
    Timestamp,
    SentAt,
    OriginalTimestamp,
    ReceivedAt,
    Traits,
    Properties,
    Context,
    Other,
}

impl Key {
    fn of(key: &str) -> Key {
        match key {
            "type" => Key::Type,
            "messageId" => Key::MessageId,
            "userId" => Key::UserId,
            "anonymousId" => Key::AnonymousId,
            "previousId" => Key::PreviousId,
            "groupId" => Key::GroupId,
            "event" => Key::Event,
            "name" => Key::Name,
            "category" => Key::Category,
            "timestamp" => Key::Timestamp,
            "sentAt" => Key::SentAt,
            "originalTimestamp" => Key::OriginalTimestamp,
            "receivedAt" => Key::ReceivedAt,
            "traits" => Key::Traits,
            "properties" => Key::Properties,
            "context" => Key::Context,
            _ => Key::Other,
        }
    }

    /// The slot of `fields` this key fills (`None`: skipped).
    fn slot(self, fields: &mut Fields) -> Option<&mut Option<Json>> {
        Some(match self {
            Key::Type => &mut fields.kind,
            Key::MessageId => &mut fields.message_id,
            Key::UserId => &mut fields.user_id,
            Key::AnonymousId => &mut fields.anonymous_id,
            Key::PreviousId => &mut fields.previous_id,
            Key::GroupId => &mut fields.group_id,
            Key::Event => &mut fields.event,
            Key::Name => &mut fields.name,
            Key::Category => &mut fields.category,
            Key::Timestamp => &mut fields.timestamp,
            Key::SentAt => &mut fields.sent_at,
            Key::OriginalTimestamp => &mut fields.original_timestamp,
            Key::ReceivedAt => &mut fields.received_at,
            Key::Traits => &mut fields.traits,
            Key::Properties => &mut fields.properties,
            Key::Context => &mut fields.context,
            Key::Other => return None,
        })
    }
}

/// Deserializes a key without allocating it.
struct KeySeed;

impl<'de> serde::de::DeserializeSeed<'de> for KeySeed {
    type Value = Key;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
        d.deserialize_str(self)
    }
}

impl serde::de::Visitor<'_> for KeySeed {
    type Value = Key;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Key, E> {
        Ok(Key::of(v))
    }
}

/// What to make of one JSON value that may be an object: an object is read
/// key by key ([`ObjectReader::object`]); any other value is built by
/// serde_json's own `Value` and handed to [`ObjectReader::other`].
trait ObjectReader<'de>: Sized {
    type Value;
    fn object<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error>;
    fn other(self, value: Json) -> Self::Value;
}

/// The visitor of an [`ObjectReader`].
struct ObjectOr<R>(R);

impl<'de, R: ObjectReader<'de>> serde::de::DeserializeSeed<'de> for ObjectOr<R> {
    type Value = R::Value;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<R::Value, D::Error> {
        d.deserialize_any(self)
    }
}

/// Builds a non-object value as `Json` (serde_json's visitor, through
/// `IntoDeserializer`) and hands it to the reader.
macro_rules! other_values {
    ($($method:ident($($arg:ident: $ty:ty)?) => $value:expr),* $(,)?) => {
        $(fn $method<E: serde::de::Error>(self, $($arg: $ty)?) -> Result<R::Value, E> {
            use serde::de::IntoDeserializer;
            let json = <Json as serde::Deserialize>::deserialize(IntoDeserializer::<E>::into_deserializer($value))?;
            Ok(self.0.other(json))
        })*
    };
}

impl<'de, R: ObjectReader<'de>> serde::de::Visitor<'de> for ObjectOr<R> {
    type Value = R::Value;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    other_values!(
        visit_bool(v: bool) => v,
        visit_i64(v: i64) => v,
        visit_u64(v: u64) => v,
        visit_f64(v: f64) => v,
        visit_str(v: &str) => v,
        visit_string(v: String) => v,
        visit_unit() => (),
        visit_none() => (),
    );
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<R::Value, A::Error> {
        let json =
            <Json as serde::Deserialize>::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))?;
        Ok(self.0.other(json))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<R::Value, A::Error> {
        self.0.object(map)
    }
}

/// Skips one value without building it, but checks it as building a
/// `Json` would: string escapes, number range and nesting depth (serde's
/// `IgnoredAny` skips those checks, so a text `from_json` could never be
/// given, such as `"x": 1e400`, would pass).
struct Skipped;

impl<'de> serde::de::DeserializeSeed<'de> for Skipped {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Skipped {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E: serde::de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Skipped)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_key_seed(Skipped)?.is_some() {
            map.next_value_seed(Skipped)?;
        }
        Ok(())
    }
}

/// Reads `context`: an object keeps only its `traits` member (a later
/// duplicate wins, as in a parsed object); anything else is kept whole, to
/// be refused by name.
struct ContextReader;

impl<'de> ObjectReader<'de> for ContextReader {
    type Value = Json;
    fn object<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut traits = None;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if key == "traits" {
                traits = Some(map.next_value::<Json>()?);
            } else {
                map.next_value_seed(Skipped)?;
            }
        }
        Ok(context_with(traits))
    }
    fn other(self, value: Json) -> Json {
        value
    }
}

/// A `context` object as Cohort keeps it: its `traits` member only.
fn context_with(traits: Option<Json>) -> Json {
    let mut out = Map::new();
    if let Some(t) = traits {
        out.insert("traits".to_string(), t);
    }
    Json::Object(out)
}

/// Reads a whole message text: an object becomes its [`Fields`]; anything
/// else is described for [`MessageError::NotAnObject`].
struct MessageReader;

impl<'de> ObjectReader<'de> for MessageReader {
    type Value = Result<Fields, String>;
    fn object<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = Fields::default();
        while let Some(key) = map.next_key_seed(KeySeed)? {
            match key {
                // A later duplicate replaces an earlier one, as in a parsed object.
                Key::Context => fields.context = Some(map.next_value_seed(ObjectOr(ContextReader))?),
                Key::Other => map.next_value_seed(Skipped)?,
                key => {
                    if let Some(slot) = key.slot(&mut fields) {
                        *slot = Some(map.next_value::<Json>()?);
                    }
                }
            }
        }
        Ok(Ok(fields))
    }
    fn other(self, value: Json) -> Self::Value {
        Err(describe(&value))
    }
}

impl Fields {
    /// The fields of a parsed JSON object.
    fn of_object(obj: &Map<String, Json>) -> Fields {
        let mut fields = Fields::default();
        for (key, value) in obj {
            let key = Key::of(key);
            if let Key::Context = key {
                fields.context = Some(match value {
                    Json::Object(ctx) => context_with(ctx.get("traits").cloned()),
                    other => other.clone(),
                });
            } else if let Some(slot) = key.slot(&mut fields) {
                *slot = Some(value.clone());
            }
        }
        fields
    }
}

/// An identifier field: absent, or a non-empty string of at most 256 bytes.
fn identifier(value: Option<Json>, field: &'static str) -> Result<Option<String>, MessageError> {
    match value {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) if s.is_empty() => {
            Err(MessageError::BadIdentifier { field, problem: "it is empty".to_string() })
        }
        Some(Json::String(s)) if s.len() > MAX_ID_BYTES => {
            Err(MessageError::BadIdentifier { field, problem: format!("it is {} bytes long", s.len()) })
        }
        Some(Json::String(s)) => Ok(Some(s)),
        // INGEST.md: identifiers are strings; a number is refused rather than
        // guessed at (is 1e3 the same user as 1000?).
        Some(other) => {
            Err(MessageError::BadIdentifier { field, problem: format!("found {}", describe(&other)) })
        }
    }
}

/// A time field: absent, or an RFC 3339 string.
fn time(value: &Option<Json>, field: &'static str) -> Result<Option<i64>, MessageError> {
    match value {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) => match parse_rfc3339_ms(s) {
            Some(ms) => Ok(Some(ms)),
            None if is_rfc3339(s) => Err(MessageError::TimeOutOfRange { field, found: format!("{s:?}") }),
            None => Err(MessageError::BadTime { field, value: s.clone() }),
        },
        Some(_) => Err(MessageError::WrongType { field, expected: "an RFC 3339 string" }),
    }
}

/// An object section (`traits`, `properties`, `context.traits`): absent,
/// `null` or an object.
fn section(name: &'static str, value: Option<Json>) -> Result<Option<Map<String, Json>>, MessageError> {
    match value {
        None | Some(Json::Null) => Ok(None),
        Some(Json::Object(m)) => Ok(Some(m)),
        Some(_) => Err(MessageError::WrongType { field: name, expected: "an object" }),
    }
}

/// Longest rendering of a value quoted in a rejection (characters).
const MAX_QUOTED_CHARS: usize = 40;

/// A value as a rejection quotes it: compact JSON, cut to
/// [`MAX_QUOTED_CHARS`] characters.
fn quote(v: &Json) -> String {
    let text = v.to_string();
    if text.chars().count() <= MAX_QUOTED_CHARS {
        text
    } else {
        let mut cut: String = text.chars().take(MAX_QUOTED_CHARS).collect();
        cut.push('…');
        cut
    }
}

/// Where flattened fields go: the output, the field errors, the section
/// being read, and how many of the output's entries came before it from
/// a section it overrides (`context.traits` under `traits`).
struct Flattener<'a> {
    out: &'a mut Vec<(String, Json)>,
    errors: &'a mut Vec<FieldError>,
    section: &'static str,
    /// Entries `out[..inherited]` came from `inherited_section`.
    inherited: usize,
    inherited_section: &'static str,
}

impl Flattener<'_> {
    /// Appends the flattened fields of `obj` under `prefix`: nested objects
    /// become dotted names; arrays of strings stay (they are list values);
    /// any other array, and a value under the empty name, is dropped and
    /// reported. Keys are read in the object's order, which is byte order
    /// (serde_json's map is sorted), so of two spellings that flatten to
    /// the same name the one holding more of it in one key comes later
    /// and is kept: `{"a":{"b":1},"a.b":2}` keeps 2.
    fn flatten(&mut self, prefix: &str, obj: Map<String, Json>) {
        for (key, value) in obj {
            let name = if prefix.is_empty() { key } else { format!("{prefix}.{key}") };
            match value {
                Json::Object(inner) => self.flatten(&name, inner),
                Json::Array(items) if !items.iter().all(Json::is_string) => self.errors.push(FieldError {
                    field: format!("{}.{name}", self.section),
                    reason: "an array is stored only when all its items are strings".to_string(),
                }),
                // No query can name "" (a name in a segment is never
                // empty, even in backticks), so it is refused here rather
                // than stored out of reach.
                _ if name.is_empty() => self.errors.push(FieldError {
                    field: format!("{}.", self.section),
                    reason: "the name is empty, and no query can name an empty field".to_string(),
                }),
                other => self.put(name, other),
            }
        }
    }

    /// Sets `name` to `value`, replacing (and reporting, when it differs)
    /// a value the message gave it already.
    fn put(&mut self, name: String, value: Json) {
        if let Some(at) = self.out.iter().position(|(n, _)| *n == name) {
            let inherited = at < self.inherited;
            let (_, dropped) = self.out.remove(at);
            if inherited {
                self.inherited -= 1;
            }
            if dropped != value {
                let (section, reason) = if inherited {
                    (
                        self.inherited_section,
                        format!(
                            "`{}` gives `{name}` the value {}, which wins over `{}`: this value, {}, is dropped",
                            self.section,
                            quote(&value),
                            self.inherited_section,
                            quote(&dropped)
                        ),
                    )
                } else {
                    (
                        self.section,
                        format!(
                            "two fields flatten to `{name}`: this value, {}, is dropped and {} is kept \
                             (of two spellings, the one with the dotted key wins)",
                            quote(&dropped),
                            quote(&value)
                        ),
                    )
                };
                self.errors.push(FieldError { field: format!("{section}.{name}"), reason });
            }
        }
        self.out.push((name, value));
    }
}

impl Message {
    /// Reads one message from its JSON text. `received_ms` is when the
    /// server received it (`receivedAt` in the message, if present, wins).
    /// Only the fields Cohort uses are built; the rest of the text is
    /// checked as parsing it into a `Json` would check it (escapes, number
    /// range, nesting depth) and skipped. Accepts, refuses and normalises
    /// exactly as [`Message::from_json`] does on the parsed text. Returns,
    /// with the outcome, the `messageId` when it is a string (a refused
    /// message is reported under it).
    pub fn parse(text: &str, received_ms: i64) -> (Result<Message, String>, Option<String>) {
        use serde::de::Deserializer as _;
        let mut de = serde_json::Deserializer::from_str(text);
        let fields = match de.deserialize_any(ObjectOr(MessageReader)).and_then(|f| de.end().map(|()| f)) {
            Ok(Ok(fields)) => fields,
            Ok(Err(found)) => return (Err(MessageError::NotAnObject(found).to_string()), None),
            Err(e) => return (Err(format!("not JSON: {e}")), None),
        };
        let message_id = fields.message_id.as_ref().and_then(Json::as_str).map(str::to_string);
        (Message::from_fields(fields, received_ms).map_err(|e| e.to_string()), message_id)
    }

    /// Reads one parsed message. `received_ms` is when the server received
    /// it (`receivedAt` in the message, if present, wins).
    pub fn from_json(json: &Json, received_ms: i64) -> Result<Message, MessageError> {
        let Json::Object(obj) = json else { return Err(MessageError::NotAnObject(describe(json))) };
        Message::from_fields(Fields::of_object(obj), received_ms)
    }

    /// Checks and normalises the fields of one message.
    fn from_fields(f: Fields, received_ms: i64) -> Result<Message, MessageError> {
        let kind = match &f.kind {
            Some(Json::String(t)) => {
                MessageType::parse(t).ok_or_else(|| MessageError::BadType(format!("{t:?}")))?
            }
            Some(other) => return Err(MessageError::BadType(describe(other))),
            None => return Err(MessageError::BadType("nothing".to_string())),
        };
        let message_id = match f.message_id {
            None | Some(Json::Null) => None,
            Some(Json::String(s)) => Some(s),
            Some(_) => return Err(MessageError::WrongType { field: "messageId", expected: "a string" }),
        };
        let user_id = identifier(f.user_id, "userId")?;
        let mut anonymous_id = identifier(f.anonymous_id, "anonymousId")?;
        if kind == MessageType::Alias {
            // alias: an identify with userId and anonymousId = previousId.
            let previous = identifier(f.previous_id, "previousId")?
                .ok_or(MessageError::Missing { kind: "alias", field: "previousId" })?;
            if user_id.is_none() {
                return Err(MessageError::Missing { kind: "alias", field: "userId" });
            }
            anonymous_id = Some(previous);
        }
        if user_id.is_none() && anonymous_id.is_none() {
            return Err(MessageError::NoIdentifier);
        }

        let received = time(&f.received_at, "receivedAt")?.unwrap_or(received_ms);
        let time_ms = match time(&f.timestamp, "timestamp")? {
            Some(t) => t,
            None => match (time(&f.sent_at, "sentAt")?, time(&f.original_timestamp, "originalTimestamp")?) {
                (Some(sent), Some(original)) => {
                    // `sent` and `original` are in range, so their
                    // difference cannot overflow; the server's receive
                    // time is not checked, hence the checked subtraction.
                    let field = "receivedAt - (sentAt - originalTimestamp)";
                    match received.checked_sub(sent - original) {
                        Some(t) if time_in_range(t) => t,
                        Some(t) => {
                            return Err(MessageError::TimeOutOfRange { field, found: describe_time_ms(t) })
                        }
                        None => {
                            return Err(MessageError::TimeOutOfRange {
                                field,
                                found: "a time past the range of 64-bit milliseconds".to_string(),
                            })
                        }
                    }
                }
                _ => received,
            },
        };

        let mut traits = Vec::new();
        let mut properties = Vec::new();
        let mut field_errors = Vec::new();
        let context_traits = match f.context {
            None | Some(Json::Null) => None,
            Some(Json::Object(mut ctx)) => section("context.traits", ctx.remove("traits"))?,
            Some(_) => return Err(MessageError::WrongType { field: "context", expected: "an object" }),
        };
        if let Some(ct) = context_traits {
            Flattener {
                out: &mut traits,
                errors: &mut field_errors,
                section: "context.traits",
                inherited: 0,
                inherited_section: "",
            }
            .flatten("", ct);
        }
        if matches!(kind, MessageType::Identify) {
            if let Some(t) = section("traits", f.traits)? {
                // `traits` win over `context.traits`.
                let inherited = traits.len();
                Flattener {
                    out: &mut traits,
                    errors: &mut field_errors,
                    section: "traits",
                    inherited,
                    inherited_section: "context.traits",
                }
                .flatten("", t);
            }
        }

        let mut event = None;
        let mut group_id = None;
        match kind {
            MessageType::Track => {
                event = match f.event {
                    Some(Json::String(e)) if !e.is_empty() => Some(e),
                    Some(Json::String(_)) | None | Some(Json::Null) => {
                        return Err(MessageError::Missing { kind: "track", field: "event" })
                    }
                    Some(_) => return Err(MessageError::WrongType { field: "event", expected: "a string" }),
                };
            }
            MessageType::Page | MessageType::Screen => {
                event = Some(kind.name().to_string());
            }
            MessageType::Group => {
                group_id = Some(
                    identifier(f.group_id, "groupId")?
                        .ok_or(MessageError::Missing { kind: "group", field: "groupId" })?,
                );
            }
            MessageType::Identify | MessageType::Alias => {}
        }
        if event.is_some() {
            if let Some(p) = section("properties", f.properties)? {
                Flattener {
                    out: &mut properties,
                    errors: &mut field_errors,
                    section: "properties",
                    inherited: 0,
                    inherited_section: "",
                }
                .flatten("", p);
            }
            if matches!(kind, MessageType::Page | MessageType::Screen) {
                for (field, value) in [("name", f.name), ("category", f.category)] {
                    match value {
                        Some(Json::String(v)) => {
                            // The message's own `name` and `category` win
                            // over the properties of those names.
                            let inherited = properties.len();
                            Flattener {
                                out: &mut properties,
                                errors: &mut field_errors,
                                section: field,
                                inherited,
                                inherited_section: "properties",
                            }
                            .put(field.to_string(), Json::String(v));
                        }
                        None | Some(Json::Null) => {}
                        Some(_) => field_errors.push(FieldError {
                            field: field.to_string(),
                            reason: "must be a string".to_string(),
                        }),
                    }
                }
            }
        }
        Ok(Message {
            kind,
            message_id,
            user_id,
            anonymous_id,
            event,
            group_id,
            time_ms,
            traits,
            properties,
            field_errors,
        })
    }
}

/// A message's values typed against the schema: what a profile write needs
/// besides the profile it resolves to.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TypedFields {
    /// Traits to set (`None`: unset by `null`).
    pub traits: Vec<(String, Option<Value>)>,
    /// Elements added to grow-only list traits (`groups` for a group message).
    pub add_to_lists: Vec<(String, Vec<String>)>,
    /// The event and its typed properties (`null` properties are left out:
    /// an event records what happened, there is nothing to unset).
    pub event: Option<(String, Vec<(String, Value)>)>,
    /// Fields refused: the message's own [`Message::field_errors`] plus every
    /// value of the wrong type for its trait or property, or under a name the
    /// database reserves.
    pub field_errors: Vec<FieldError>,
}

impl Message {
    /// Whether the schema has room for the message's event (always, for a
    /// message without one or with an event already known): the catalog
    /// refuses the whole message otherwise, before applying any of it.
    pub fn admit_event(&self, schema: &Schema, limits: &SchemaLimits) -> Result<(), ModelError> {
        self.event.as_deref().map_or(Ok(()), |event| schema.admit_event(event, limits))
    }

    /// Types the message's traits and properties against `schema`, inferring
    /// and recording the type of a name seen for the first time (INGEST.md)
    /// within `limits`. A value of the wrong type, or a new name over a
    /// cap, rejects that field only (an event over a cap drops the event
    /// and its properties; see [`Message::admit_event`]).
    pub fn typed(&self, schema: &mut Schema, limits: &SchemaLimits) -> TypedFields {
        let mut out = TypedFields { field_errors: self.field_errors.clone(), ..TypedFields::default() };
        for (name, json) in &self.traits {
            match schema.coerce_trait(name, json, limits) {
                Ok(value) => out.traits.push((name.clone(), value)),
                Err(e) => out
                    .field_errors
                    .push(FieldError { field: format!("traits.{name}"), reason: e.to_string() }),
            }
        }
        if let Some(group) = &self.group_id {
            // `groups` is a list trait the first group message creates.
            match schema.trait_type(GROUPS_TRAIT) {
                None | Some(TraitType::List) => match schema.admit_trait(GROUPS_TRAIT, limits) {
                    Ok(()) => {
                        let _ = schema.declare_trait(GROUPS_TRAIT, TraitType::List);
                        out.add_to_lists.push((GROUPS_TRAIT.to_string(), vec![group.clone()]));
                    }
                    Err(e) => out
                        .field_errors
                        .push(FieldError { field: "groupId".to_string(), reason: e.to_string() }),
                },
                Some(other) => out.field_errors.push(FieldError {
                    field: "groupId".to_string(),
                    reason: format!("the trait `{GROUPS_TRAIT}` holds {} values, not a list", other.name()),
                }),
            }
        }
        if let Some(event) = &self.event {
            if let Err(e) = schema.admit_event(event, limits) {
                out.field_errors.push(FieldError { field: "event".to_string(), reason: e.to_string() });
                return out;
            }
            schema.declare_event(event);
            let mut props = Vec::with_capacity(self.properties.len());
            for (name, json) in &self.properties {
                match schema.coerce_property(event, name, json, limits) {
                    Ok(Some(value)) => props.push((name.clone(), value)),
                    Ok(None) => {}
                    Err(e) => out
                        .field_errors
                        .push(FieldError { field: format!("properties.{name}"), reason: e.to_string() }),
                }
            }
            out.event = Some((event.clone(), props));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const RECEIVED: i64 = 1_800_000_000_000;

    fn parse(v: Json) -> Result<Message, MessageError> {
        Message::from_json(&v, RECEIVED)
    }

    #[test]
    fn identify_flattens_traits_and_merges_context_traits() {
        let m = parse(json!({
            "type": "identify", "userId": "u1", "messageId": "m1",
            "timestamp": "2026-01-02T03:04:05.678+01:00",
            "context": {"traits": {"plan": "free", "email": "a@b"}},
            "traits": {"plan": "pro", "address": {"city": "Lyon", "geo": {"lat": 45.7}}, "tags": ["a", "b"],
                       "scores": [1, 2], "gone": null}
        }))
        .unwrap();
        assert_eq!(m.kind, MessageType::Identify);
        assert_eq!(m.time_ms, parse_rfc3339_ms("2026-01-02T02:04:05.678Z").unwrap());
        let names: Vec<&str> = m.traits.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, vec!["email", "address.city", "address.geo.lat", "gone", "plan", "tags"]);
        assert_eq!(m.traits.iter().find(|(n, _)| n == "plan").unwrap().1, json!("pro"), "traits win");
        assert_eq!(
            m.field_errors,
            vec![
                FieldError {
                    field: "context.traits.plan".into(),
                    reason: "`traits` gives `plan` the value \"pro\", which wins over `context.traits`: \
                             this value, \"free\", is dropped"
                        .into()
                },
                FieldError {
                    field: "traits.scores".into(),
                    reason: "an array is stored only when all its items are strings".into()
                }
            ]
        );
    }

    #[test]
    fn message_time_follows_ingest_rules() {
        // No timestamp: receivedAt - (sentAt - originalTimestamp).
        let m = parse(json!({"type": "track", "anonymousId": "a", "event": "e",
            "sentAt": "2026-01-01T00:00:10Z", "originalTimestamp": "2026-01-01T00:00:04Z",
            "receivedAt": "2026-01-01T00:01:00Z"}))
        .unwrap();
        assert_eq!(m.time_ms, parse_rfc3339_ms("2026-01-01T00:00:54Z").unwrap());
        // Only one of the two: the time of receipt.
        let m = parse(
            json!({"type": "track", "anonymousId": "a", "event": "e", "sentAt": "2026-01-01T00:00:10Z"}),
        )
        .unwrap();
        assert_eq!(m.time_ms, RECEIVED);
        let err = parse(json!({"type": "track", "anonymousId": "a", "event": "e", "timestamp": "yesterday"}));
        assert_eq!(err.unwrap_err().to_string(), "`timestamp` is not an RFC 3339 timestamp: \"yesterday\"");
    }

    /// Issue 12: a time derived from `sentAt` and `originalTimestamp` was
    /// stored whatever its year (−7973, +12025) while `timestamp` is held to
    /// the years 0000 to 9999; every way of deriving the time now follows
    /// that one range.
    #[test]
    fn every_derived_message_time_is_range_checked() {
        let received = parse_rfc3339_ms("2026-01-01T00:00:00Z").unwrap();
        let derived = |sent: &str, original: &str| {
            Message::from_json(
                &json!({"type": "track", "anonymousId": "a", "event": "e",
                    "sentAt": sent, "originalTimestamp": original}),
                received,
            )
        };
        for (sent, original) in [
            ("9999-12-31T23:59:59Z", "0000-01-01T00:00:00Z"),
            ("0000-01-01T00:00:00Z", "9999-12-31T23:59:59Z"),
        ] {
            let err = derived(sent, original).unwrap_err().to_string();
            assert!(
                err.contains("receivedAt - (sentAt - originalTimestamp)")
                    && err.contains("0000-01-01T00:00:00Z"),
                "{sent} / {original}: {err}"
            );
        }
        // Inside the range both ways of giving the time are accepted.
        assert_eq!(
            derived("2026-01-01T00:00:10Z", "2026-01-01T00:00:04Z").unwrap().time_ms,
            received - 6_000
        );
        // `timestamp` (and `receivedAt`) with an offset that moves them out of
        // the range in UTC are refused by the same rule.
        for (field, text) in
            [("timestamp", "0000-01-01T00:00:00+01:00"), ("receivedAt", "9999-12-31T23:30:00-01:00")]
        {
            let err = parse(json!({"type": "track", "anonymousId": "a", "event": "e", field: text}))
                .unwrap_err()
                .to_string();
            assert!(err.contains(field) && err.contains("9999-12-31T23:59:59.999Z"), "{field}: {err}");
        }
        assert!(parse(json!({"type": "track", "anonymousId": "a", "event": "e",
            "timestamp": "0000-01-01T00:00:00Z"}))
        .is_ok());
    }

    /// Issue 12: `{"a":{"b":1},"a.b":2}` kept one value and dropped the
    /// other without a word. The kept value is decided by key order (a
    /// dotted key wins over its nested spelling) and every dropped value
    /// that differs from it is a field rejection.
    #[test]
    fn values_dropped_by_flattening_are_reported() {
        for text in [r#"{"a":{"b":1},"a.b":2}"#, r#"{"a.b":2,"a":{"b":1}}"#] {
            let section: Json = serde_json::from_str(text).unwrap();
            let m = parse(json!({"type": "identify", "userId": "u", "traits": section.clone()})).unwrap();
            assert_eq!(m.traits, vec![("a.b".to_string(), json!(2))], "{text}");
            assert_eq!(m.field_errors.len(), 1, "{text}: {:?}", m.field_errors);
            assert_eq!(m.field_errors[0].field, "traits.a.b");
            assert!(
                m.field_errors[0].reason.contains("dropped") && m.field_errors[0].reason.contains('1'),
                "{:?}",
                m.field_errors
            );
            let t =
                parse(json!({"type": "track", "userId": "u", "event": "e", "properties": section})).unwrap();
            assert_eq!(t.properties, vec![("a.b".to_string(), json!(2))], "{text}");
            assert_eq!(
                t.field_errors.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(),
                vec!["properties.a.b"]
            );
        }
        // The same value twice loses nothing and is not reported.
        let m =
            parse(json!({"type": "identify", "userId": "u", "traits": {"a": {"b": 1}, "a.b": 1}})).unwrap();
        assert_eq!((m.traits.len(), m.field_errors.len()), (1, 0), "{m:?}");
        // `traits` win over `context.traits`; a different value overridden is reported.
        let m = parse(json!({"type": "identify", "userId": "u",
            "context": {"traits": {"plan": "free", "vip": true}}, "traits": {"plan": "pro", "vip": true}}))
        .unwrap();
        assert_eq!(m.traits.iter().find(|(n, _)| n == "plan").unwrap().1, json!("pro"));
        let fields: Vec<&str> = m.field_errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, vec!["context.traits.plan"], "{:?}", m.field_errors);
        // A page's `name` wins over `properties.name`; a different one is reported.
        let m = parse(json!({"type": "page", "userId": "u", "name": "Home", "properties": {"name": "Old"}}))
            .unwrap();
        assert_eq!(m.properties, vec![("name".to_string(), json!("Home"))]);
        assert_eq!(
            m.field_errors.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(),
            vec!["properties.name"]
        );
        let m = parse(json!({"type": "page", "userId": "u", "name": "Home", "properties": {"name": "Home"}}))
            .unwrap();
        assert!(m.field_errors.is_empty(), "{:?}", m.field_errors);
    }

    /// Issue 12: an empty name was accepted but no query can name it; it is
    /// now a field rejection that says why, in traits and in properties.
    #[test]
    fn empty_names_are_rejected_with_the_reason() {
        let m = parse(json!({"type": "identify", "userId": "u", "traits": {"": 1, "ok": 2}})).unwrap();
        assert_eq!(m.traits, vec![("ok".to_string(), json!(2))]);
        assert_eq!(m.field_errors.len(), 1, "{:?}", m.field_errors);
        assert!(m.field_errors[0].reason.contains("empty"), "{:?}", m.field_errors);
        let m =
            parse(json!({"type": "track", "userId": "u", "event": "e", "properties": {"": "x"}})).unwrap();
        assert!(m.properties.is_empty());
        assert!(
            m.field_errors[0].field.starts_with("properties") && m.field_errors[0].reason.contains("empty")
        );
        // An empty event name is refused with the message, as before.
        assert!(parse(json!({"type": "track", "userId": "u", "event": ""})).is_err());
    }

    #[test]
    fn page_screen_group_alias() {
        let m = parse(json!({"type": "page", "userId": "u", "name": "Pricing", "category": "Docs",
            "properties": {"path": "/pricing"}}))
        .unwrap();
        assert_eq!(m.event.as_deref(), Some("page"));
        assert_eq!(
            m.properties,
            vec![
                ("path".to_string(), json!("/pricing")),
                ("name".to_string(), json!("Pricing")),
                ("category".to_string(), json!("Docs"))
            ]
        );
        let m =
            parse(json!({"type": "track", "userId": "u", "event": "e", "context": {"traits": {"vip": true}},
            "properties": {"cart": {"total": 9.5}}, "traits": {"ignored": 1}}))
            .unwrap();
        assert_eq!(m.traits, vec![("vip".to_string(), json!(true))], "context.traits apply on any message");
        assert_eq!(m.properties, vec![("cart.total".to_string(), json!(9.5))]);
        let m = parse(json!({"type": "screen", "userId": "u"})).unwrap();
        assert_eq!(m.event.as_deref(), Some("screen"));
        let m =
            parse(json!({"type": "group", "userId": "u", "groupId": "acme", "traits": {"size": 3}})).unwrap();
        assert_eq!((m.group_id.as_deref(), m.traits.len()), (Some("acme"), 0), "group traits are not stored");
        let m = parse(json!({"type": "alias", "userId": "u", "previousId": "anon-1"})).unwrap();
        assert_eq!((m.user_id.as_deref(), m.anonymous_id.as_deref()), (Some("u"), Some("anon-1")));
        let err = parse(json!({"type": "identify", "userId": 42})).unwrap_err().to_string();
        assert_eq!(err, "`userId` must be a non-empty string of at most 256 bytes: found a number");
    }

    #[test]
    fn typing_infers_then_rejects_wrong_fields_only() {
        let mut schema = Schema::new();
        schema.declare_trait("signup_at", crate::model::TraitType::Timestamp).unwrap();
        let first = parse(json!({"type": "identify", "userId": "u", "traits": {"age": 30, "signup_at": "2026-01-01T00:00:00Z"}}))
            .unwrap()
            .typed(&mut schema, &SchemaLimits::default());
        assert_eq!(
            first.traits,
            vec![
                ("age".to_string(), Some(Value::Number(30.0))),
                ("signup_at".to_string(), Some(Value::Timestamp(1_767_225_600_000)))
            ]
        );
        let second = parse(json!({"type": "identify", "userId": "u",
            "traits": {"age": "forty", "city": "Lyon", "user_id": "x", "nick": null}}))
        .unwrap()
        .typed(&mut schema, &SchemaLimits::default());
        assert_eq!(
            second.traits,
            vec![("city".to_string(), Some(Value::Keyword("Lyon".into()))), ("nick".to_string(), None)]
        );
        let reasons: Vec<String> =
            second.field_errors.iter().map(|e| format!("{}: {}", e.field, e.reason)).collect();
        assert_eq!(
            reasons,
            vec![
                "traits.age: `age` is number, but the value is the string \"forty\"".to_string(),
                "traits.user_id: `user_id` is reserved and maintained by the database".to_string()
            ]
        );
        let t = parse(json!({"type": "track", "userId": "u", "event": "buy", "properties": {"amount": 5, "note": null}}))
            .unwrap()
            .typed(&mut schema, &SchemaLimits::default());
        assert_eq!(t.event, Some(("buy".to_string(), vec![("amount".to_string(), Value::Number(5.0))])));
        assert!(schema.has_event("buy"));
        let g = parse(json!({"type": "group", "userId": "u", "groupId": "acme"}))
            .unwrap()
            .typed(&mut schema, &SchemaLimits::default());
        assert_eq!(g.add_to_lists, vec![("groups".to_string(), vec!["acme".to_string()])]);
    }

    #[test]
    fn broken_messages_name_the_field() {
        let cases = [
            (json!([1]), "a message must be a JSON object, found an array"),
            (
                json!({"userId": "u"}),
                "`type` must be one of identify, track, page, screen, group, alias; found nothing",
            ),
            (
                json!({"type": "Identify", "userId": "u"}),
                "`type` must be one of identify, track, page, screen, group, alias; found \"Identify\"",
            ),
            (json!({"type": "identify"}), "a message needs `userId` or `anonymousId`"),
            (
                json!({"type": "identify", "userId": ""}),
                "`userId` must be a non-empty string of at most 256 bytes: it is empty",
            ),
            (
                json!({"type": "identify", "anonymousId": "x".repeat(257)}),
                "`anonymousId` must be a non-empty string of at most 256 bytes: it is 257 bytes long",
            ),
            (
                json!({"type": "identify", "userId": {"a": 1}}),
                "`userId` must be a non-empty string of at most 256 bytes: found an object",
            ),
            (json!({"type": "track", "userId": "u"}), "track messages need `event`"),
            (json!({"type": "track", "userId": "u", "event": ""}), "track messages need `event`"),
            (json!({"type": "group", "userId": "u"}), "group messages need `groupId`"),
            (json!({"type": "alias", "userId": "u"}), "alias messages need `previousId`"),
            (json!({"type": "alias", "previousId": "p"}), "alias messages need `userId`"),
            (json!({"type": "identify", "userId": "u", "traits": [1]}), "`traits` must be an object"),
            (json!({"type": "identify", "userId": "u", "context": 3}), "`context` must be an object"),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input.clone()).unwrap_err().to_string(), want, "{input}");
        }
    }

    /// The reader of texts and the reader of parsed objects agree on every
    /// message: accepted ones field for field, refused ones word for word.
    #[test]
    fn reading_text_equals_reading_the_parsed_object() {
        let texts = [
            r#"{"type":"identify","messageId":"m1","userId":"u1","anonymousId":"a1","timestamp":"2024-03-10T17:35:04.838Z","traits":{"country":"DE","age":38,"ltv":53.86,"tags":["x"],"newsletter":false}}"#,
            r#"{"type":"track","messageId":"m2","userId":"u0","event":"purchase","timestamp":"2026-05-01T00:30:14.743Z","properties":{"amount":109.46,"currency":"EUR"}}"#,
            r#"{"type":"identify","userId":"u","traits":{"a":{"b":1},"a.b":2,"c":[1,"x"]},"context":{"ip":"1.2.3.4","library":{"name":"x"},"traits":{"a.b":0,"vip":true},"page":{"url":"u"}}}"#,
            r#"{"type":"track","userId":"u","event":"e","context":{"traits":{"t":1},"traits":{"t":2}}}"#,
            r#"{"type":"track","userId":"first","userId":"second","event":"e","event":"f"}"#,
            r#"{"type":"page","anonymousId":"a","name":"Home","category":7,"properties":{"name":"old","path":"/"}}"#,
            r#"{"type":"screen","userId":"u","name":null}"#,
            r#"{"type":"group","userId":"u","groupId":"acme","traits":{"size":3}}"#,
            r#"{"type":"alias","userId":"u","previousId":"p"}"#,
            r#"{"type":"track","anonymousId":"a","event":"e","sentAt":"2026-01-01T00:00:10Z","originalTimestamp":"2026-01-01T00:00:04Z","receivedAt":"2026-01-01T00:01:00Z"}"#,
            r#"{"type":"track","anonymousId":"a","event":"e","timestamp":"yesterday"}"#,
            r#"{"type":"track","anonymousId":"a","event":"e","timestamp":5}"#,
            r#"{"type":"identify","userId":"u","context":3}"#,
            r#"{"type":"identify","userId":"u","context":[1,{"traits":{}}]}"#,
            r#"{"type":"identify","userId":"u","context":null,"traits":null}"#,
            r#"{"type":"identify","userId":"u","context":{"traits":[1]}}"#,
            r#"{"type":"identify","userId":"u","traits":"no"}"#,
            r#"{"type":"identify","userId":42,"messageId":"m9"}"#,
            r#"{"type":"identify","messageId":7,"userId":"u"}"#,
            r#"{"type":"Identify","userId":"u"}"#,
            r#"{"type":null,"userId":"u"}"#,
            r#"{"userId":"u","other":{"deep":[1,2,{"x":null}]}}"#,
            r#"{"type":"track","userId":"u","event":""}"#,
            r#"{"type":"track","userId":"u","event":{"e":1}}"#,
            r#"{"type":"track","userId":"escaped","event":"eé","properties":{"k"q":"v
"}}"#,
            r#"{"type":"track","userId":"u","event":"e","properties":{"big":18446744073709551615,"neg":-3,"f":1e400}}"#,
            r#"[1,2]"#,
            r#""text""#,
            r#"12"#,
            r#"null"#,
            r#"true"#,
            r#"{"type":"track","userId":"u","event":"e"} trailing"#,
            r#"{"type":"track","userId":"u","event":"e""#,
            r#"{"type":"track",}"#,
            r#""#,
        ];
        for text in texts {
            let (got, id) = Message::parse(text, RECEIVED);
            let want = match serde_json::from_str::<Json>(text) {
                Err(e) => Err(format!("not JSON: {e}")),
                Ok(json) => Message::from_json(&json, RECEIVED).map_err(|e| e.to_string()),
            };
            assert_eq!(got, want, "{text}");
            let want_id = serde_json::from_str::<Json>(text)
                .ok()
                .and_then(|j| j.get("messageId").and_then(Json::as_str).map(str::to_string));
            assert_eq!(id, want_id, "{text}");
        }
    }
}
