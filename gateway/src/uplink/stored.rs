//! A telemetry row's `points` object as the buffer holds it, read without
//! copying, for the layouts made from it at publish time (compact JSON,
//! Sparkplug B).

use std::borrow::Cow;
use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

/// A point as a telemetry row holds it.
#[derive(Deserialize)]
pub(crate) struct StoredPoint<'a> {
    #[serde(borrow)]
    pub value: Option<&'a RawValue>,
    #[serde(borrow)]
    pub quality: Cow<'a, str>,
    #[serde(borrow)]
    pub error: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub unit: Option<Cow<'a, str>>,
}

/// A row's `points` object, in its order.
pub(crate) struct StoredPoints<'a>(pub Vec<(Cow<'a, str>, StoredPoint<'a>)>);

impl<'de: 'a, 'a> Deserialize<'de> for StoredPoints<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct InOrder<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for InOrder<'a> {
            type Value = StoredPoints<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a points object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut points = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some(entry) = map.next_entry::<Cow<'a, str>, StoredPoint<'a>>()? {
                    points.push(entry);
                }
                Ok(StoredPoints(points))
            }
        }
        deserializer.deserialize_map(InOrder(std::marker::PhantomData))
    }
}
