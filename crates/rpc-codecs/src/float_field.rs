//! Serde adapter that lets JSON carry every float: NaN and the infinities travel as the strings
//! proto3's JSON mapping uses (`"NaN"`, `"Infinity"`, `"-Infinity"`), where `serde_json` would
//! write `null` and then fail to read it back. Formats that are not human-readable
//! (MessagePack) keep their native floats. `#[message]` applies it to every `f32` and `f64`
//! field, alone, in an `Option` or in a `Vec`.

use serde::{de, Deserializer, Serialize, Serializer};
use std::{fmt, marker::PhantomData};

/// `f32` or `f64`.
pub trait Float: Copy + Serialize {
    /// The value, widened.
    fn to_f64(self) -> f64;
    /// A value read as `f64`, narrowed.
    fn from_f64(value: f64) -> Self;
}

impl Float for f32 {
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    fn from_f64(value: f64) -> Self {
        value as f32
    }
}

impl Float for f64 {
    fn to_f64(self) -> f64 {
        self
    }
    fn from_f64(value: f64) -> Self {
        value
    }
}

/// Serializes a float, spelling a non-finite one out for a human-readable format.
pub fn serialize<T: Float, S: Serializer>(value: &T, serializer: S) -> Result<S::Ok, S::Error> {
    let wide = value.to_f64();
    match (wide.is_finite(), serializer.is_human_readable()) {
        (false, true) => serializer.serialize_str(match wide {
            v if v.is_nan() => "NaN",
            v if v > 0.0 => "Infinity",
            _ => "-Infinity",
        }),
        _ => value.serialize(serializer),
    }
}

/// Deserializes a number, or one of the strings [`serialize`] writes (or a number in a string,
/// which proto3's JSON mapping also allows).
pub fn deserialize<'de, T: Float, D: Deserializer<'de>>(deserializer: D) -> Result<T, D::Error> {
    deserializer.deserialize_any(FloatVisitor(PhantomData))
}

struct FloatVisitor<T>(PhantomData<T>);

impl<T: Float> de::Visitor<'_> for FloatVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(r#"a number, "NaN", "Infinity" or "-Infinity""#)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        Ok(T::from_f64(v))
    }

    fn visit_f32<E: de::Error>(self, v: f32) -> Result<T, E> {
        Ok(T::from_f64(f64::from(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        Ok(T::from_f64(v as f64))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        Ok(T::from_f64(v as f64))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        match v {
            "NaN" => Ok(T::from_f64(f64::NAN)),
            "Infinity" => Ok(T::from_f64(f64::INFINITY)),
            "-Infinity" => Ok(T::from_f64(f64::NEG_INFINITY)),
            number => number.parse().map(T::from_f64).map_err(|_| E::invalid_value(de::Unexpected::Str(v), &self)),
        }
    }
}

/// One float, as [`serialize`] writes it.
struct Spelled<T>(T);

impl<T: Float> Serialize for Spelled<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serialize(&self.0, serializer)
    }
}

impl<'de, T: Float> de::Deserialize<'de> for Spelled<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize(deserializer).map(Spelled)
    }
}

/// The same adapter for `Option<f32>` and `Option<f64>`.
pub mod option {
    use super::{Float, Spelled};
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes `Some` float as [`super::serialize`] does.
    pub fn serialize<T: Float, S: Serializer>(value: &Option<T>, serializer: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(value) => serializer.serialize_some(&Spelled(*value)),
            None => serializer.serialize_none(),
        }
    }

    /// Deserializes nothing or a float as [`super::deserialize`] does.
    pub fn deserialize<'de, T: Float, D: Deserializer<'de>>(deserializer: D) -> Result<Option<T>, D::Error> {
        Ok(Option::<Spelled<T>>::deserialize(deserializer)?.map(|spelled| spelled.0))
    }
}

/// The same adapter for `Vec<f32>` and `Vec<f64>`.
pub mod list {
    use super::{Float, Spelled};
    use serde::{Deserialize, Deserializer, Serializer};

    /// Serializes each float as [`super::serialize`] does.
    pub fn serialize<T: Float, S: Serializer>(values: &[T], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(values.iter().map(|value| Spelled(*value)))
    }

    /// Deserializes a list of floats as [`super::deserialize`] reads each.
    pub fn deserialize<'de, T: Float, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<T>, D::Error> {
        Ok(Vec::<Spelled<T>>::deserialize(deserializer)?.into_iter().map(|spelled| spelled.0).collect())
    }
}
