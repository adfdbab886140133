//! Typed collections: see [`Collection`].

use std::fmt;
use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use thiserror::Error;

use crate::error::{FieldsError, InvalidId, StoreError};
use crate::id::{new_id, RecordId};
use crate::record::{Fields, Record};
use crate::store::LocalStore;

/// Why a typed collection call failed. Every variant names the collection; the
/// store's and serde's errors are kept as [`source`](std::error::Error::source).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CollectionError {
    /// The store failed (nothing was changed: store calls are atomic).
    #[error("collection {collection:?}: {source}")]
    Store {
        /// The collection.
        collection: String,
        /// What the store said.
        #[source]
        source: StoreError,
    },
    /// A stored record's fields do not deserialise into the type (a field of
    /// another type, one missing that the type requires, ...). The record is
    /// untouched; read it untyped with [`LocalStore::get`].
    #[error("record {collection}/{id} does not deserialise into {type_name}: {source}")]
    Decode {
        /// The collection.
        collection: String,
        /// The record.
        id: RecordId,
        /// The Rust type asked for.
        type_name: &'static str,
        /// serde's error.
        #[source]
        source: serde_json::Error,
    },
    /// The value does not serialise into a record's fields (serde failed, or it is
    /// not a JSON object). Nothing was written.
    #[error("a {type_name} does not serialise into a record of {collection:?}: {source}")]
    Encode {
        /// The collection.
        collection: String,
        /// The Rust type written.
        type_name: &'static str,
        /// What went wrong.
        #[source]
        source: FieldsError,
    },
    /// [`Collection::put`] of a value without an id (no `id` field, `null` or
    /// `""`): use [`Collection::insert`] or [`Collection::put_with_id`].
    #[error(
        "a {type_name} written to {collection:?} with put has no id (use insert or put_with_id)"
    )]
    NoId {
        /// The collection.
        collection: String,
        /// The Rust type written.
        type_name: &'static str,
    },
    /// The value's `id` field is not a valid [`RecordId`].
    #[error("a {type_name} written to {collection:?} has an invalid id: {source}")]
    InvalidId {
        /// The collection.
        collection: String,
        /// The Rust type written.
        type_name: &'static str,
        /// What is wrong with the id.
        #[source]
        source: InvalidId,
    },
    /// [`Collection::insert`] of a value that already has an id.
    #[error("a {type_name} inserted into {collection:?} already has the id {id:?} (use put)")]
    HasId {
        /// The collection.
        collection: String,
        /// The Rust type written.
        type_name: &'static str,
        /// The id it carries, as it was.
        id: String,
    },
}

impl CollectionError {
    /// Whether the same call may succeed later (the store was busy).
    pub fn is_transient(&self) -> bool {
        matches!(self, CollectionError::Store { source, .. } if source.is_transient())
    }
}

/// One page of a [`Collection`]: values in id order, and where the next starts.
#[derive(Clone, Debug, PartialEq)]
pub struct CollectionPage<T> {
    /// Up to `limit` values, in ascending id order.
    pub items: Vec<T>,
    /// The cursor for the next page (the id of the last item) when a record after
    /// it existed as this page was read; `None` at the end (and for `limit == 0`,
    /// which reads nothing).
    pub next: Option<RecordId>,
}

/// Typed access to the collections of any [`LocalStore`]: implemented for every
/// store, sized or not.
pub trait LocalStoreExt: LocalStore {
    /// The collection `name` of this store, read and written as `T`. Cheap: it
    /// borrows the store and the name, and checks nothing until a call.
    fn collection<'a, T>(&'a self, name: &'a str) -> Collection<'a, Self, T> {
        Collection {
            store: self,
            name,
            _type: PhantomData,
        }
    }
}

impl<S: LocalStore + ?Sized> LocalStoreExt for S {}

/// One collection of a [`LocalStore`], read and written as the serde type `T`,
/// with paged listing.
///
/// [`LocalStoreExt::collection`] is implemented for every `LocalStore` (the
/// SQLite, sled and memory stores, `Arc`/`Box` of them, `dyn LocalStore` and any
/// outside store), so `store.collection::<Song>("songs")` gives a
/// [`Collection`]: `get`, `put`, `insert`, `put_with_id`, `delete`, paged
/// `list` / `page`, `count` and `all`, every value converted with serde and every
/// failure a [`CollectionError`] naming the collection (and the record, where
/// there is one).
///
/// # The id
///
/// A record's id is not one of its fields ([`Record::fields`] never holds `id`).
/// Reads offer it to `T` as an `id` field, so a struct may declare `id: String`
/// (as the structs `tidemark generate` writes do) or `id: RecordId`, or leave it
/// out. Writes take it from there:
/// - [`put`](Collection::put) writes under the id in `T`'s `id` field, and fails
///   with [`CollectionError::NoId`] when `T` has none (no such field, `null` or
///   `""`) and [`CollectionError::InvalidId`] when it is not a valid id;
/// - [`insert`](Collection::insert) writes a new record under a fresh
///   [`new_id`] and returns it; it fails with [`CollectionError::HasId`] when `T`
///   already carries an id (write that one with `put`), so an insert never
///   silently writes somewhere else than the value says;
/// - [`put_with_id`](Collection::put_with_id) writes under the id given; an `id`
///   field of `T` is not stored either way.
///
/// # Paging
///
/// [`page`](Collection::page) returns up to `limit` values in id order and the
/// cursor of the next page; the walk is stable under concurrent writes (see
/// [`SyncStore::list_page`]): every record that exists throughout is seen
/// exactly once.
///
/// ```
/// # #[cfg(feature = "testkit")]
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use serde::{Deserialize, Serialize};
/// use sync_traits::testkit::MemoryStore;
/// use sync_traits::LocalStoreExt;
///
/// #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
/// struct Song {
///     #[serde(default)]
///     id: String,
///     title: String,
/// }
///
/// let store = MemoryStore::new();
/// let songs = store.collection::<Song>("songs");
/// for n in 0..5 {
///     songs.insert(&Song { title: format!("song {n}"), ..Song::default() }).await?;
/// }
/// let mut seen = Vec::new();
/// let mut cursor = None;
/// loop {
///     let page = songs.page(cursor.as_ref(), 2).await?;
///     seen.extend(page.items);
///     match page.next {
///         Some(next) => cursor = Some(next),
///         None => break,
///     }
/// }
/// assert_eq!(seen.len(), songs.count().await?);
/// # Ok(()) }
/// # #[cfg(not(feature = "testkit"))] fn main() {}
/// ```
///
/// `T: Serialize` to write, `T: DeserializeOwned` to read.
pub struct Collection<'a, S: ?Sized, T> {
    store: &'a S,
    name: &'a str,
    _type: PhantomData<fn() -> T>,
}

impl<S: ?Sized, T> Clone for Collection<'_, S, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<S: ?Sized, T> Copy for Collection<'_, S, T> {}

impl<S: ?Sized, T> fmt::Debug for Collection<'_, S, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Collection")
            .field("name", &self.name)
            .field("type", &std::any::type_name::<T>())
            .finish()
    }
}

impl<'a, S: LocalStore + ?Sized, T> Collection<'a, S, T> {
    /// The collection's name.
    pub fn name(&self) -> &'a str {
        self.name
    }

    /// The store underneath, for untyped calls.
    pub fn store(&self) -> &'a S {
        self.store
    }

    fn store_err(&self, source: StoreError) -> CollectionError {
        CollectionError::Store {
            collection: self.name.to_owned(),
            source,
        }
    }

    /// Deletes the record; returns whether it existed (see [`LocalStore::delete`]).
    pub async fn delete(&self, id: &RecordId) -> Result<bool, CollectionError> {
        self.store
            .delete(self.name, id)
            .await
            .map_err(|e| self.store_err(e))
    }

    /// How many records the collection holds (the store's [`SyncStore::count`]).
    pub async fn count(&self) -> Result<usize, CollectionError> {
        self.store
            .count(self.name)
            .await
            .map_err(|e| self.store_err(e))
    }
}

impl<'a, S: LocalStore + ?Sized, T: DeserializeOwned> Collection<'a, S, T> {
    fn decode(&self, record: Record) -> Result<T, CollectionError> {
        let Record { id, mut fields, .. } = record;
        fields.insert("id".into(), Value::String(id.as_str().to_owned()));
        serde_json::from_value(Value::Object(fields)).map_err(|source| CollectionError::Decode {
            collection: self.name.to_owned(),
            id,
            type_name: std::any::type_name::<T>(),
            source,
        })
    }

    /// The record as `T`, if present. A record whose fields do not deserialise
    /// into `T` is [`CollectionError::Decode`].
    pub async fn get(&self, id: &RecordId) -> Result<Option<T>, CollectionError> {
        match self.store.get(self.name, id).await {
            Ok(Some(r)) => self.decode(r).map(Some),
            Ok(None) => Ok(None),
            Err(e) => Err(self.store_err(e)),
        }
    }

    /// Up to `limit` records after `after` (from the first for `None`), in id
    /// order, each with its id (for types without an `id` field). One
    /// [`SyncStore::list_page`]: the store reads `limit` records, not the
    /// collection. The first record that does not deserialise fails the call.
    pub async fn entries(
        &self,
        after: Option<&RecordId>,
        limit: usize,
    ) -> Result<Vec<(RecordId, T)>, CollectionError> {
        let records = self
            .store
            .list_page(self.name, after.cloned(), limit)
            .await
            .map_err(|e| self.store_err(e))?;
        records
            .into_iter()
            .map(|r| {
                let id = r.id.clone();
                self.decode(r).map(|v| (id, v))
            })
            .collect()
    }

    /// Up to `limit` values after `after`, in id order: [`entries`](Self::entries)
    /// without the ids.
    pub async fn list(
        &self,
        after: Option<&RecordId>,
        limit: usize,
    ) -> Result<Vec<T>, CollectionError> {
        let records = self
            .store
            .list_page(self.name, after.cloned(), limit)
            .await
            .map_err(|e| self.store_err(e))?;
        records.into_iter().map(|r| self.decode(r)).collect()
    }

    /// One page: up to `limit` values after `after`, and the cursor of the next
    /// page, `None` when no record after this page existed as it was read. Reads
    /// `limit + 1` records (one to know whether there is more), so the last page
    /// needs no empty page after it. Pass `page.next` as the next `after`.
    pub async fn page(
        &self,
        after: Option<&RecordId>,
        limit: usize,
    ) -> Result<CollectionPage<T>, CollectionError> {
        if limit == 0 {
            return Ok(CollectionPage {
                items: Vec::new(),
                next: None,
            });
        }
        let mut records = self
            .store
            .list_page(self.name, after.cloned(), limit.saturating_add(1))
            .await
            .map_err(|e| self.store_err(e))?;
        let more = records.len() > limit;
        records.truncate(limit);
        let next = if more {
            records.last().map(|r| r.id.clone())
        } else {
            None
        };
        let items = records
            .into_iter()
            .map(|r| self.decode(r))
            .collect::<Result<_, _>>()?;
        Ok(CollectionPage { items, next })
    }

    /// Every value of the collection, in id order. This loads the whole
    /// collection; walk it with [`page`](Self::page) where it may be large.
    pub async fn all(&self) -> Result<Vec<T>, CollectionError> {
        let records = self
            .store
            .list(self.name)
            .await
            .map_err(|e| self.store_err(e))?;
        records.into_iter().map(|r| self.decode(r)).collect()
    }
}

impl<'a, S: LocalStore + ?Sized, T: Serialize> Collection<'a, S, T> {
    /// `value` as fields, with its `id` field taken out.
    fn encode(&self, value: &T) -> Result<(Fields, Option<Value>), CollectionError> {
        let encode_err = |source| CollectionError::Encode {
            collection: self.name.to_owned(),
            type_name: std::any::type_name::<T>(),
            source,
        };
        match serde_json::to_value(value) {
            Ok(Value::Object(mut fields)) => {
                let id = fields.remove("id");
                Ok((fields, id))
            }
            Ok(other) => Err(encode_err(FieldsError::NotAnObject(value_kind(&other)))),
            Err(e) => Err(encode_err(FieldsError::Serde(e))),
        }
    }

    async fn write(&self, id: RecordId, fields: Fields) -> Result<(), CollectionError> {
        self.store
            .put(Record {
                collection: self.name.to_owned(),
                id,
                fields,
            })
            .await
            .map_err(|e| self.store_err(e))
    }

    /// Creates or replaces the record under the id in `value`'s `id` field (see
    /// [`LocalStore::put`]) and returns that id. No id is
    /// [`CollectionError::NoId`]; one that is not valid is
    /// [`CollectionError::InvalidId`]; in both cases nothing is written.
    pub async fn put(&self, value: &T) -> Result<RecordId, CollectionError> {
        let (fields, id) = self.encode(value)?;
        let type_name = std::any::type_name::<T>();
        let id = match id {
            Some(Value::String(s)) if !s.is_empty() => {
                RecordId::parse(&s).map_err(|source| CollectionError::InvalidId {
                    collection: self.name.to_owned(),
                    type_name,
                    source,
                })?
            }
            None | Some(Value::Null) | Some(Value::String(_)) => {
                return Err(CollectionError::NoId {
                    collection: self.name.to_owned(),
                    type_name,
                })
            }
            Some(other) => {
                return Err(CollectionError::InvalidId {
                    collection: self.name.to_owned(),
                    type_name,
                    source: InvalidId {
                        value: other.to_string().chars().take(64).collect(),
                        reason: "must be a string",
                    },
                })
            }
        };
        self.write(id.clone(), fields).await?;
        Ok(id)
    }

    /// Writes `value` as a new record under a fresh [`new_id`] and returns the id.
    /// A value that already carries an id (a non-empty `id` field) is
    /// [`CollectionError::HasId`] and nothing is written.
    pub async fn insert(&self, value: &T) -> Result<RecordId, CollectionError> {
        let (fields, id) = self.encode(value)?;
        match id {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s.is_empty() => {}
            Some(other) => {
                return Err(CollectionError::HasId {
                    collection: self.name.to_owned(),
                    type_name: std::any::type_name::<T>(),
                    id: match other {
                        Value::String(s) => s,
                        v => v.to_string(),
                    },
                })
            }
        }
        let id = new_id();
        self.write(id.clone(), fields).await?;
        Ok(id)
    }

    /// Creates or replaces the record `id` with `value` (an `id` field of `value`
    /// is not stored: `id` wins).
    pub async fn put_with_id(&self, id: &RecordId, value: &T) -> Result<(), CollectionError> {
        let (fields, _) = self.encode(value)?;
        self.write(id.clone(), fields).await
    }
}

fn value_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}
