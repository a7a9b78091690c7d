//! The schema: the type of every trait and of every event's properties,
//! declared by an operator or inferred from the first value seen.
//!
//! Reserved names (`user_id`, `anonymous_id`, `first_seen`, `last_seen`)
//! are maintained by the database and cannot be declared or written.

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

/// The types of traits and event properties.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Schema {
    traits: BTreeMap<String, TraitType>,
    events: BTreeMap<String, BTreeMap<String, TraitType>>,
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
        declare(self.events.entry(event.to_string()).or_default(), property, ty)
    }

    /// Coerces a trait's JSON value, inferring and recording the trait's type
    /// when it is new. `Ok(None)` is `null` (unset).
    pub fn coerce_trait(
        &mut self,
        name: &str,
        json: &serde_json::Value,
    ) -> Result<Option<Value>, ModelError> {
        if RESERVED_NAMES.contains(&name) {
            return Err(ModelError::Reserved { name: name.to_string() });
        }
        coerce(&mut self.traits, name, json)
    }

    /// Coerces an event property's JSON value, inferring its type per event
    /// name when it is new.
    pub fn coerce_property(
        &mut self,
        event: &str,
        name: &str,
        json: &serde_json::Value,
    ) -> Result<Option<Value>, ModelError> {
        coerce(self.event_mut(event), name, json)
    }

    /// Adds every declaration of `other` that this schema does not have,
    /// and reports the first conflict.
    pub fn merge_from(&mut self, other: &Schema) -> Result<(), ModelError> {
        for (name, ty) in other.traits() {
            declare(&mut self.traits, name, ty)?;
        }
        for (event, props) in other.events() {
            let mine = self.events.entry(event.to_string()).or_default();
            for (name, ty) in props {
                declare(mine, name, *ty)?;
            }
        }
        Ok(())
    }
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
        assert_eq!(s.coerce_trait("age", &json!(30)).unwrap(), Some(Value::Number(30.0)));
        assert_eq!(s.trait_type("age"), Some(TraitType::Number));
        let err = s.coerce_trait("age", &json!("forty")).unwrap_err();
        assert!(err.to_string().contains("`age` is number"), "{err}");
        assert_eq!(s.coerce_trait("age", &json!(null)).unwrap(), None);
    }

    #[test]
    fn declared_types_win_and_conflicts_are_refused() {
        let mut s = Schema::new();
        s.declare_trait("signup_at", TraitType::Timestamp).unwrap();
        assert_eq!(
            s.coerce_trait("signup_at", &json!("1970-01-01T00:00:00.002Z")).unwrap(),
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
        assert!(s.coerce_trait("xs", &json!([1, 2])).is_err());
        assert_eq!(s.trait_type("xs"), None);
    }
}
