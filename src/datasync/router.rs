//! The index of authorized subscription items, and routing: which subscriptions a delta
//! reaches, and as what.
//!
//! Routing never scans every subscription. Per dealer of the delta's model:
//! - Broadcast keeps a list of its items; all of them match.
//! - Simple keeps a hash map from query key to items; the object's key (old and new)
//!   picks the bucket.
//! - Filter indexes each item under one equality condition every match requires
//!   ([`Filter::required_equalities`]): a map per field path from value key to items.
//!   A delta looks up each indexed path in the old and new objects (one [`ValueKey`]
//!   per looked-up value) and evaluates only the items in those buckets. Items with no
//!   such condition sit in a scan list evaluated for every delta of the model.
//!   Among an item's conditions, the one whose bucket is currently smallest is chosen,
//!   so a condition many items share (`["==", "deleted", false]`) does not become a
//!   bucket that every delta has to walk.
//!
//! A subscription sees the old object if *any* of its items matches it, and the new one
//! if any matches it; [`Delta::shape_for`] turns that pair into what it receives, so each
//! subscription appears at most once per delta. [`Router::route_naive`] computes the
//! same thing by scanning everything; tests hold the two equal.
//!
//! The router is plain data with `&mut self` updates: the caller wraps it in a lock (no
//! await happens inside any method), and bookkeeping per subscription (tokens, buffers,
//! connections) lives with the caller, keyed by the same `u64` ids.
//!
//! Key functions (Python methods of Simple dealers) may be slow, so a caller that holds the
//! router under a lock computes them first, outside it, with [`FunctionKeys::compute`] and
//! routes with [`Router::route_with`]; [`Router::route`] computes them inline.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use super::dealer::{Dealer, DealerKind, KeyFunctionError, PreparedFilter, PreparedQuery, SimpleKey};
use super::delta::{Delta, DeltaShape};
use super::filter::{Filter, FilterError, FilterLimits};
use crate::value::{lookup, ValueKey};

/// Index of an item in [`Router::items`].
type ItemId = usize;

/// Why `authorizeSubscription` refuses its items. Display texts are the reply texts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// `items` is not a list, or an item is not an object: a wrongly typed parameter,
    /// for which docs/protocol.md has no specific text.
    #[error("Invalid params")]
    InvalidParams,
    /// An item lacks `dealer` or `query` (docs/protocol.md's `"Missing field <name>"`).
    #[error("Missing field {0}")]
    MissingField(&'static str),
    /// `dealer` is not a string.
    #[error("dealer should be a dealer name")]
    DealerNotString,
    /// No dealer has that name (kept for logs; the text has no name, as in 0.1).
    #[error("No such dealer")]
    NoSuchDealer(String),
    /// A Filter dealer's item whose query is not a valid expression.
    #[error("Invalid query for dealer {dealer:?}: {error}")]
    InvalidQuery {
        /// The dealer's name.
        dealer: String,
        /// What is wrong with the expression.
        #[source]
        error: FilterError,
    },
    /// More items than the service allows in one authorization.
    #[error("Too many items")]
    TooManyItems(usize),
    /// The caller reused a subscription id it had not removed: a bug in the caller, not
    /// something a backend can cause, so it should be answered with "Internal error".
    #[error("subscription {0} is already registered")]
    DuplicateSubscription(u64),
}

/// A router cannot be built from these dealers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouterError {
    /// Two dealers share a name, so items could not say which one they mean.
    #[error("two dealers are named {0:?}")]
    DuplicateDealer(String),
}

/// The authorized subscription items of every dealer, indexed for routing.
pub struct Router {
    /// The dealers and the checks of authorization items, shared with whoever prepares items
    /// outside the router's lock.
    authorizer: Authorizer,
    /// The per-dealer index, parallel to the dealers.
    indexes: Vec<DealerIndex>,
    /// Every live item; `None` slots are free and listed in `free`, so ids stay stable
    /// and removal needs no shifting.
    items: Vec<Option<Item>>,
    /// Free slots of `items`, reused before the vector grows.
    free: Vec<ItemId>,
    /// Each subscription's items, for removal.
    subscriptions: HashMap<u64, Vec<ItemId>>,
}

/// The dealers of a router and what authorization checks against them: immutable once built
/// and cheap to clone, so items can be prepared (filters parsed, keys computed) without the
/// router, and its lock, at hand.
#[derive(Clone, Debug)]
pub struct Authorizer(Arc<Dealers>);

#[derive(Debug)]
struct Dealers {
    /// The dealers, in the order given; indexes into this are dealer ids.
    list: Vec<Dealer>,
    /// Dealer id by name, for authorization.
    by_name: HashMap<String, usize>,
    /// Dealer ids by model, for routing; also answers "Unknown model".
    by_model: HashMap<String, Vec<usize>>,
    /// The bounds on Filter queries.
    limits: FilterLimits,
}

/// The items of one authorization, checked and prepared, ready for [`Router::insert`].
#[derive(Debug)]
pub struct PreparedItems(Vec<(usize, PreparedQuery)>);

impl PreparedItems {
    /// How many items there are.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Authorizer {
    /// The dealers with these bounds on Filter queries.
    ///
    /// # Errors
    ///
    /// [`RouterError::DuplicateDealer`] when two dealers share a name.
    pub fn new(dealers: Vec<Dealer>, limits: FilterLimits) -> Result<Authorizer, RouterError> {
        let mut by_name = HashMap::new();
        let mut by_model: HashMap<String, Vec<usize>> = HashMap::new();
        for (id, dealer) in dealers.iter().enumerate() {
            if by_name.insert(dealer.name.clone(), id).is_some() {
                return Err(RouterError::DuplicateDealer(dealer.name.clone()));
            }
            by_model.entry(dealer.model.clone()).or_default().push(id);
        }
        Ok(Authorizer(Arc::new(Dealers { list: dealers, by_name, by_model, limits })))
    }

    /// The dealers, in the order given.
    #[must_use]
    pub fn dealers(&self) -> &[Dealer] {
        &self.0.list
    }

    /// Whether some dealer handles `model` (otherwise `publishDeltas` says "Unknown model").
    #[must_use]
    pub fn known_model(&self, model: &str) -> bool {
        self.0.by_model.contains_key(model)
    }

    /// Checks and prepares the raw `items` parameter of `authorizeSubscription`.
    ///
    /// Each item is checked in 0.1's order — `dealer` present, a string, an existing
    /// dealer; then `query` present and valid for that dealer — and the first problem is
    /// the error. Unknown keys in an item are ignored. An empty list is a valid subscription
    /// that receives nothing.
    ///
    /// # Errors
    ///
    /// The [`AuthError`] of the first invalid item (its `Display` is the reply text).
    pub fn prepare(&self, items: &Value) -> Result<PreparedItems, AuthError> {
        let items = items.as_array().ok_or(AuthError::InvalidParams)?;
        items
            .iter()
            .map(|item| {
                let item = item.as_object().ok_or(AuthError::InvalidParams)?;
                let dealer = item.get("dealer").ok_or(AuthError::MissingField("dealer"))?;
                let dealer = dealer.as_str().ok_or(AuthError::DealerNotString)?;
                let dealer = self.dealer_id(dealer)?;
                let query = item.get("query").ok_or(AuthError::MissingField("query"))?;
                self.prepare_one(dealer, query)
            })
            .collect::<Result<Vec<_>, _>>()
            .map(PreparedItems)
    }

    fn dealer_id(&self, name: &str) -> Result<usize, AuthError> {
        self.0.by_name.get(name).copied().ok_or_else(|| AuthError::NoSuchDealer(name.to_owned()))
    }

    fn prepare_one(&self, dealer: usize, query: &Value) -> Result<(usize, PreparedQuery), AuthError> {
        let dealer_spec = &self.0.list[dealer];
        let prepared = dealer_spec
            .prepare_query(query, self.0.limits)
            .map_err(|error| AuthError::InvalidQuery { dealer: dealer_spec.name.clone(), error })?;
        Ok((dealer, prepared))
    }

    fn dealers_of(&self, model: &str) -> &[usize] {
        self.0.by_model.get(model).map_or(&[], Vec::as_slice)
    }
}

/// An authorized item in the index.
struct Item {
    sub_id: u64,
    dealer: usize,
    kind: ItemKind,
    /// Position in the bucket it is listed in, so removal is a `swap_remove`, O(1) even in
    /// a bucket that holds every item of a dealer.
    pos: usize,
}

enum ItemKind {
    Broadcast,
    Simple(ValueKey),
    Filter {
        filter: Filter,
        /// The `(path, key)` bucket it is listed in, or `None` for the scan list.
        slot: Option<(Arc<str>, ValueKey)>,
    },
}

enum DealerIndex {
    Broadcast(Vec<ItemId>),
    Simple(HashMap<ValueKey, Vec<ItemId>>),
    Filter {
        /// Per indexed field path, the items by the key they require at that path. A path
        /// goes with its last item, so distinct field names cannot grow the index for ever.
        paths: HashMap<Arc<str>, Buckets>,
        /// Items with no required equality, evaluated for every delta of the model.
        scan: Vec<ItemId>,
    },
}

/// Items by the key their condition requires.
type Buckets = HashMap<ValueKey, Vec<ItemId>>;

/// A subscription item's verdict on a delta: (subscription, sees old, sees new).
type Hit = (u64, bool, bool);

/// A Simple dealer's keys for the old and new objects (`None`: no object, or the keyed
/// field is missing).
type KeyPair = (Option<ValueKey>, Option<ValueKey>);

/// The keys that the function-keyed Simple dealers of a delta's model compute for its old
/// and new objects, computed ahead of routing so that the functions (Python methods) run
/// without the router's lock held.
///
/// Dealers are identified by their position in the list given to [`Router::new`], so it must
/// be computed from the same list in the same order ([`Router::dealers`]).
#[derive(Debug, Default)]
pub struct FunctionKeys {
    /// Per dealer id: the key pair, or `None` when the function failed (already logged) and
    /// the dealer delivers nothing.
    keys: HashMap<usize, Option<KeyPair>>,
}

impl FunctionKeys {
    /// Runs the key function of every function-keyed Simple dealer of `delta`'s model on its
    /// old and new objects. A failure is logged with the dealer's name, as in routing.
    #[must_use]
    pub fn compute(dealers: &[Dealer], delta: &Delta) -> FunctionKeys {
        let (old, new) = (delta.old_object(), delta.new_object());
        let keys = dealers
            .iter()
            .enumerate()
            .filter(|(_, dealer)| {
                dealer.model == delta.model() && matches!(dealer.kind, DealerKind::Simple(SimpleKey::Function(_)))
            })
            .map(|(id, dealer)| (id, keys_of(dealer, old, new)))
            .collect();
        FunctionKeys { keys }
    }

    /// Whether any of `dealers` computes its keys with a function (only then is it worth
    /// computing keys ahead of routing).
    #[must_use]
    pub fn needed(dealers: &[Dealer]) -> bool {
        dealers.iter().any(|dealer| matches!(dealer.kind, DealerKind::Simple(SimpleKey::Function(_))))
    }
}

impl Router {
    /// A router with these dealers, the default bounds on Filter queries, and no
    /// subscriptions.
    ///
    /// # Errors
    ///
    /// [`RouterError::DuplicateDealer`] when two dealers share a name.
    pub fn new(dealers: Vec<Dealer>) -> Result<Self, RouterError> {
        Ok(Self::with_authorizer(Authorizer::new(dealers, FilterLimits::default())?))
    }

    /// A router for the dealers of `authorizer`, with no subscriptions.
    #[must_use]
    pub fn with_authorizer(authorizer: Authorizer) -> Self {
        let indexes = authorizer
            .dealers()
            .iter()
            .map(|dealer| match dealer.kind {
                DealerKind::Broadcast => DealerIndex::Broadcast(Vec::new()),
                DealerKind::Simple(_) => DealerIndex::Simple(HashMap::new()),
                DealerKind::Filter => DealerIndex::Filter { paths: HashMap::new(), scan: Vec::new() },
            })
            .collect();
        Self { authorizer, indexes, items: Vec::new(), free: Vec::new(), subscriptions: HashMap::new() }
    }

    /// The dealers and the checks of authorization items.
    #[must_use]
    pub fn authorizer(&self) -> &Authorizer {
        &self.authorizer
    }

    /// The dealers, in the order given to [`new`](Self::new).
    #[must_use]
    pub fn dealers(&self) -> &[Dealer] {
        self.authorizer.dealers()
    }

    /// Whether some dealer handles `model` (otherwise `publishDeltas` says "Unknown model").
    #[must_use]
    pub fn known_model(&self, model: &str) -> bool {
        self.authorizer.known_model(model)
    }

    /// How many subscriptions are registered.
    #[must_use]
    pub fn subscription_count(&self) -> usize {
        self.subscriptions.len()
    }

    /// Whether `sub_id` is registered.
    #[must_use]
    pub fn contains_subscription(&self, sub_id: u64) -> bool {
        self.subscriptions.contains_key(&sub_id)
    }

    /// How many field paths the Filter dealers index (for tests and introspection).
    #[must_use]
    pub fn indexed_paths(&self) -> usize {
        self.indexes
            .iter()
            .map(|index| if let DealerIndex::Filter { paths, .. } = index { paths.len() } else { 0 })
            .sum()
    }

    /// Registers subscription `sub_id` from the raw `items` parameter of
    /// `authorizeSubscription` ([`Authorizer::prepare`], then [`insert`](Self::insert)).
    /// Nothing is registered unless every item is valid.
    ///
    /// # Errors
    ///
    /// The [`AuthError`] of the first invalid item, or [`AuthError::DuplicateSubscription`]
    /// when `sub_id` is already registered.
    pub fn authorize(&mut self, sub_id: u64, items: &Value) -> Result<(), AuthError> {
        self.check_new(sub_id)?;
        let prepared = self.authorizer.prepare(items)?;
        self.insert(sub_id, prepared)
    }

    /// Registers subscription `sub_id` with items prepared by this router's
    /// [`Authorizer`]. Costs one index update per item.
    ///
    /// # Errors
    ///
    /// [`AuthError::DuplicateSubscription`] when `sub_id` is already registered.
    pub fn insert(&mut self, sub_id: u64, prepared: PreparedItems) -> Result<(), AuthError> {
        self.check_new(sub_id)?;
        let ids = prepared.0.into_iter().map(|(dealer, query)| self.link(sub_id, dealer, query)).collect();
        self.subscriptions.insert(sub_id, ids);
        Ok(())
    }

    /// Unregisters a subscription; returns whether it was registered.
    pub fn remove_subscription(&mut self, sub_id: u64) -> bool {
        let Some(ids) = self.subscriptions.remove(&sub_id) else {
            return false;
        };
        for id in ids {
            self.unlink(id);
        }
        true
    }

    /// The subscriptions `delta` reaches and what each receives, sorted by subscription
    /// id, each at most once. A failing key function is logged and skips only its
    /// dealer's items.
    #[must_use]
    pub fn route(&self, delta: &Delta) -> Vec<(u64, DeltaShape)> {
        self.route_with(delta, &FunctionKeys::default())
    }

    /// [`route`](Self::route) with the keys of function-keyed dealers computed beforehand
    /// (a dealer missing from `keys` computes its keys inline).
    #[must_use]
    pub fn route_with(&self, delta: &Delta, keys: &FunctionKeys) -> Vec<(u64, DeltaShape)> {
        let (old, new) = (delta.old_object(), delta.new_object());
        let mut hits: Vec<Hit> = Vec::new();
        for &dealer in self.authorizer.dealers_of(delta.model()) {
            match &self.indexes[dealer] {
                DealerIndex::Broadcast(items) => {
                    hits.extend(items.iter().map(|&id| (self.item(id).sub_id, old.is_some(), new.is_some())));
                }
                DealerIndex::Simple(buckets) => {
                    let computed = match keys.keys.get(&dealer) {
                        Some(computed) => computed.clone(),
                        None => self.simple_keys(dealer, old, new),
                    };
                    let Some((old_key, new_key)) = computed else {
                        continue;
                    };
                    let mut hit_bucket = |key: &Option<ValueKey>, sees_old, sees_new| {
                        if let Some(items) = key.as_ref().and_then(|k| buckets.get(k)) {
                            hits.extend(items.iter().map(|&id| (self.item(id).sub_id, sees_old, sees_new)));
                        }
                    };
                    if old_key == new_key {
                        hit_bucket(&old_key, true, true);
                    } else {
                        hit_bucket(&old_key, true, false);
                        hit_bucket(&new_key, false, true);
                    }
                }
                DealerIndex::Filter { paths, scan } => {
                    for (path, buckets) in paths {
                        let key_at = |object: Option<&Value>| object.and_then(|o| lookup(o, path)).map(ValueKey::of);
                        let (old_key, new_key) = (key_at(old), key_at(new));
                        let bucket =
                            |key: &Option<ValueKey>| key.as_ref().and_then(|k| buckets.get(k)).map(Vec::as_slice);
                        if old_key == new_key {
                            self.evaluate(bucket(&old_key), old, new, &mut hits);
                        } else {
                            // An item's condition requires its bucket's key, so an item in
                            // the old object's bucket cannot match the new object, nor the
                            // reverse: each bucket is evaluated against its own object.
                            self.evaluate(bucket(&old_key), old, None, &mut hits);
                            self.evaluate(bucket(&new_key), None, new, &mut hits);
                        }
                    }
                    self.evaluate(Some(scan.as_slice()), old, new, &mut hits);
                }
            }
        }
        finish(delta, hits)
    }

    /// What [`route`](Self::route) returns, computed by evaluating every item of every
    /// subscription with no index: the reference for tests and benchmarks.
    #[must_use]
    pub fn route_naive(&self, delta: &Delta) -> Vec<(u64, DeltaShape)> {
        let none = FunctionKeys::default();
        let mut keys = KeyCache::new(&none);
        let mut hits = Vec::new();
        for (&sub_id, ids) in &self.subscriptions {
            for &id in ids {
                if let Some((sees_old, sees_new)) = self.item_sees(id, delta, &mut keys) {
                    hits.push((sub_id, sees_old, sees_new));
                }
            }
        }
        finish(delta, hits)
    }

    /// What subscription `sub_id` receives of `delta`, by evaluating each of its items (no
    /// index): for replaying a stream to one subscription. `keys` are the delta's function
    /// keys computed when it was published (missing ones are computed inline).
    #[must_use]
    pub fn shape_for(&self, sub_id: u64, delta: &Delta, keys: &FunctionKeys) -> Option<DeltaShape> {
        let ids = self.subscriptions.get(&sub_id)?;
        let mut cache = KeyCache::new(keys);
        let (mut sees_old, mut sees_new) = (false, false);
        for &id in ids {
            if let Some((old, new)) = self.item_sees(id, delta, &mut cache) {
                sees_old |= old;
                sees_new |= new;
            }
        }
        delta.shape_for(sees_old, sees_new)
    }

    /// Whether item `id` sees the old and the new object of `delta`; `None` for an item of
    /// another model, or of a Simple dealer whose key function failed.
    fn item_sees(&self, id: ItemId, delta: &Delta, keys: &mut KeyCache<'_>) -> Option<(bool, bool)> {
        let item = self.item(id);
        let dealer = &self.dealers()[item.dealer];
        if dealer.model != delta.model() {
            return None;
        }
        let (old, new) = (delta.old_object(), delta.new_object());
        Some(match &item.kind {
            ItemKind::Broadcast => (old.is_some(), new.is_some()),
            ItemKind::Simple(query) => {
                let (old_key, new_key) = keys.get(item.dealer, dealer, delta)?;
                (old_key.as_ref() == Some(query), new_key.as_ref() == Some(query))
            }
            ItemKind::Filter { filter, .. } => {
                (old.is_some_and(|o| filter.matches(o)), new.is_some_and(|n| filter.matches(n)))
            }
        })
    }

    fn check_new(&self, sub_id: u64) -> Result<(), AuthError> {
        if self.subscriptions.contains_key(&sub_id) {
            Err(AuthError::DuplicateSubscription(sub_id))
        } else {
            Ok(())
        }
    }

    fn item(&self, id: ItemId) -> &Item {
        self.items[id].as_ref().expect("indexes and subscriptions list only live items")
    }

    /// The Simple keys of the old and new objects, or `None` (logged) if the key
    /// function failed on either, in which case the dealer delivers nothing.
    fn simple_keys(&self, dealer: usize, old: Option<&Value>, new: Option<&Value>) -> Option<KeyPair> {
        keys_of(&self.dealers()[dealer], old, new)
    }

    /// Evaluates the filters of `items` against the objects given (`None`: not checked,
    /// counts as not seen) and records the items that see either.
    fn evaluate(&self, items: Option<&[ItemId]>, old: Option<&Value>, new: Option<&Value>, hits: &mut Vec<Hit>) {
        for &id in items.into_iter().flatten() {
            let item = self.item(id);
            let ItemKind::Filter { filter, .. } = &item.kind else {
                continue;
            };
            let sees_old = old.is_some_and(|o| filter.matches(o));
            let sees_new = new.is_some_and(|n| filter.matches(n));
            if sees_old || sees_new {
                hits.push((item.sub_id, sees_old, sees_new));
            }
        }
    }

    /// Lists a new item in its dealer's index.
    fn link(&mut self, sub_id: u64, dealer: usize, query: PreparedQuery) -> ItemId {
        let id = self.free.pop().unwrap_or_else(|| {
            self.items.push(None);
            self.items.len() - 1
        });
        let (kind, bucket) = match (query, &mut self.indexes[dealer]) {
            (PreparedQuery::Broadcast, DealerIndex::Broadcast(items)) => (ItemKind::Broadcast, items),
            (PreparedQuery::Simple(key), DealerIndex::Simple(buckets)) => {
                let bucket = buckets.entry(key.clone()).or_default();
                (ItemKind::Simple(key), bucket)
            }
            (PreparedQuery::Filter(prepared), DealerIndex::Filter { paths, scan }) => {
                let PreparedFilter { filter, candidates } = *prepared;
                let slot = choose_slot(paths, candidates);
                let bucket = match &slot {
                    Some((path, key)) => paths.entry(Arc::clone(path)).or_default().entry(key.clone()).or_default(),
                    None => scan,
                };
                (ItemKind::Filter { filter, slot }, bucket)
            }
            _ => unreachable!("Dealer::prepare_query returns the dealer's own kind"),
        };
        let pos = bucket.len();
        bucket.push(id);
        self.items[id] = Some(Item { sub_id, dealer, kind, pos });
        id
    }

    /// Removes an item from its dealer's index and frees its slot.
    fn unlink(&mut self, id: ItemId) {
        let Some(item) = self.items[id].take() else {
            return;
        };
        self.free.push(id);
        let moved = match (&mut self.indexes[item.dealer], &item.kind) {
            (DealerIndex::Broadcast(items), ItemKind::Broadcast)
            | (DealerIndex::Filter { scan: items, .. }, ItemKind::Filter { slot: None, .. }) => {
                swap_remove(items, item.pos)
            }
            (DealerIndex::Simple(buckets), ItemKind::Simple(key)) => remove_from_bucket(buckets, key, item.pos),
            (DealerIndex::Filter { paths, .. }, ItemKind::Filter { slot: Some((path, key)), .. }) => {
                let Some(buckets) = paths.get_mut(path) else {
                    unreachable!("an item's path is indexed while the item is listed")
                };
                let moved = remove_from_bucket(buckets, key, item.pos);
                if buckets.is_empty() {
                    paths.remove(path);
                }
                moved
            }
            _ => unreachable!("an item is listed in the index of its own dealer's kind"),
        };
        // The last item of the bucket took the removed one's place.
        if let Some(Some(moved)) = moved.map(|m| self.items[m].as_mut()) {
            moved.pos = item.pos;
        }
    }
}

/// A Simple dealer's keys for the old and new objects, or `None` (logged) if its key
/// function failed on either, in which case the dealer delivers nothing.
fn keys_of(dealer: &Dealer, old: Option<&Value>, new: Option<&Value>) -> Option<KeyPair> {
    let key_of = |object: Option<&Value>| -> Result<Option<ValueKey>, KeyFunctionError> {
        object.map_or(Ok(None), |o| dealer.simple_key(o))
    };
    match key_of(old).and_then(|old_key| Ok((old_key, key_of(new)?))) {
        Ok(keys) => Some(keys),
        Err(error) => {
            log::error!("{error}; the delta is not delivered to this dealer's subscriptions");
            None
        }
    }
}

/// The index condition for a new Filter item: among the conditions it requires, the one
/// whose bucket is smallest now (the first on ties); `None` when it has none (the item goes
/// to the scan list). The path is shared with the index when it is already there.
fn choose_slot(
    paths: &HashMap<Arc<str>, Buckets>,
    candidates: Vec<(String, ValueKey)>,
) -> Option<(Arc<str>, ValueKey)> {
    let bucket_len = |path: &str, key: &ValueKey| paths.get(path).and_then(|b| b.get(key)).map_or(0, Vec::len);
    let (path, key) = candidates.into_iter().min_by_key(|(path, key)| bucket_len(path, key))?;
    let path = paths.get_key_value(path.as_str()).map_or_else(|| Arc::from(path), |(shared, _)| Arc::clone(shared));
    Some((path, key))
}

/// The keys of Simple dealers for one delta, each computed at most once: from precomputed
/// [`FunctionKeys`] when there, otherwise by the dealer (a field lookup, or its function).
struct KeyCache<'a> {
    precomputed: &'a FunctionKeys,
    computed: HashMap<usize, Option<KeyPair>>,
}

impl<'a> KeyCache<'a> {
    fn new(precomputed: &'a FunctionKeys) -> Self {
        KeyCache { precomputed, computed: HashMap::new() }
    }

    /// The key pair of dealer `id`, or `None` when its function failed (already logged).
    fn get(&mut self, id: usize, dealer: &Dealer, delta: &Delta) -> Option<KeyPair> {
        if let Some(keys) = self.precomputed.keys.get(&id) {
            return keys.clone();
        }
        self.computed.entry(id).or_insert_with(|| keys_of(dealer, delta.old_object(), delta.new_object())).clone()
    }
}

/// `swap_remove` at `pos`, returning the item that moved into `pos`, if any.
fn swap_remove(items: &mut Vec<ItemId>, pos: usize) -> Option<ItemId> {
    items.swap_remove(pos);
    items.get(pos).copied()
}

/// Removes position `pos` of bucket `key`, dropping the bucket once empty so empty
/// buckets do not accumulate (and an empty path index is skipped by routing).
fn remove_from_bucket(buckets: &mut HashMap<ValueKey, Vec<ItemId>>, key: &ValueKey, pos: usize) -> Option<ItemId> {
    let Some(items) = buckets.get_mut(key) else { unreachable!("an item's bucket exists while the item is listed") };
    let moved = swap_remove(items, pos);
    if items.is_empty() {
        if let Entry::Occupied(entry) = buckets.entry(key.clone()) {
            entry.remove();
        }
    }
    moved
}

/// Merges the hits of each subscription (any item seeing an object means the
/// subscription sees it) and translates the delta for each, sorted by subscription id.
fn finish(delta: &Delta, mut hits: Vec<Hit>) -> Vec<(u64, DeltaShape)> {
    hits.sort_unstable_by_key(|hit| hit.0);
    hits.chunk_by(|a, b| a.0 == b.0)
        .filter_map(|group| {
            let sees_old = group.iter().any(|h| h.1);
            let sees_new = group.iter().any(|h| h.2);
            Some((group[0].0, delta.shape_for(sees_old, sees_new)?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datasync::dealer::KeyFunction;
    use serde_json::json;
    use std::sync::Arc;

    /// A key function that behaves like a Python method raising on some objects.
    struct Python;
    impl KeyFunction for Python {
        fn key(&self, data: &Value) -> Result<Value, String> {
            if data.get("explode").is_some() {
                Err("ZeroDivisionError: division by zero".to_owned())
            } else {
                Ok(data.get("owner").cloned().unwrap_or(Value::Null))
            }
        }
    }

    fn router() -> Router {
        Router::new(vec![
            Dealer::broadcast("all_tasks", "Task"),
            Dealer::simple_field("tasks_by_owner", "Task", "owner.id"),
            Dealer::simple_fn("tasks_by_py", "Task", Arc::new(Python)),
            Dealer::filter("tasks", "Task"),
            Dealer::filter("players", "Player"),
        ])
        .expect("distinct dealer names")
    }

    fn insert(data: Value) -> Delta {
        Delta::Insert { model: "Task".into(), data }
    }

    fn delete(data: Value) -> Delta {
        Delta::Delete { model: "Task".into(), data }
    }

    fn update(old_data: Value, new_data: Value) -> Delta {
        Delta::Update { model: "Task".into(), new_data, old_data }
    }

    /// Routes with both implementations, checks they agree, returns the result.
    fn route(r: &Router, d: &Delta) -> Vec<(u64, DeltaShape)> {
        let routed = r.route(d);
        assert_eq!(routed, r.route_naive(d), "route and route_naive disagree on {d:?}");
        routed
    }

    #[test]
    fn duplicate_dealer_names_are_refused() {
        let err = Router::new(vec![Dealer::broadcast("a", "X"), Dealer::filter("a", "Y")]).err();
        assert_eq!(err, Some(RouterError::DuplicateDealer("a".into())));
    }

    #[test]
    fn known_models() {
        let r = router();
        assert!(r.known_model("Task"));
        assert!(r.known_model("Player"));
        assert!(!r.known_model("task"));
        assert!(!r.known_model("Nope"));
        assert_eq!(r.route(&Delta::Insert { model: "Nope".into(), data: json!({}) }), vec![]);
    }

    #[test]
    fn auth_error_texts() {
        let mut r = router();
        let text = |r: &mut Router, v: Value| r.authorize(1, &v).expect_err("refused").to_string();
        assert_eq!(text(&mut r, json!([{"dealer": "nope", "query": 1}])), "No such dealer");
        assert_eq!(text(&mut r, json!([{"query": 1}])), "Missing field dealer");
        assert_eq!(text(&mut r, json!([{"dealer": "all_tasks"}])), "Missing field query");
        assert_eq!(text(&mut r, json!([{"dealer": 5, "query": 1}])), "dealer should be a dealer name");
        assert_eq!(text(&mut r, json!([{"dealer": null, "query": 1}])), "dealer should be a dealer name");
        assert_eq!(text(&mut r, json!([{"dealer": ["all_tasks"], "query": 1}])), "dealer should be a dealer name");
        assert_eq!(
            text(&mut r, json!([{"dealer": "tasks", "query": ["=", "a", 1]}])),
            "Invalid query for dealer \"tasks\": unknown operator \"=\" (expected ==, <, <=, >, >=, and, or, not)"
        );
        assert_eq!(
            text(&mut r, json!([{"dealer": "tasks", "query": null}])),
            "Invalid query for dealer \"tasks\": an expression must be a non-empty array such as [\"==\", \"field\", value]"
        );
        assert_eq!(text(&mut r, json!({"dealer": "all_tasks", "query": 1})), "Invalid params");
        assert_eq!(text(&mut r, json!(["all_tasks"])), "Invalid params");
        assert_eq!(text(&mut r, json!(null)), "Invalid params");
        assert_eq!(r.subscription_count(), 0, "nothing registered by refused requests");
    }

    #[test]
    fn auth_checks_follow_0_1_order() {
        let mut r = router();
        // dealer existence is checked before the query's presence
        assert_eq!(r.authorize(1, &json!([{"dealer": "nope"}])), Err(AuthError::NoSuchDealer("nope".into())));
        // the first bad item decides
        assert_eq!(
            r.authorize(1, &json!([{"dealer": "all_tasks", "query": null}, {"dealer": 1}, {"query": 1}])),
            Err(AuthError::DealerNotString)
        );
    }

    #[test]
    fn every_kind_needs_a_query_but_null_is_present() {
        let mut r = router();
        for dealer in ["all_tasks", "tasks_by_owner", "tasks_by_py", "tasks"] {
            assert_eq!(r.authorize(1, &json!([{"dealer": dealer}])), Err(AuthError::MissingField("query")));
        }
        assert_eq!(r.authorize(1, &json!([{"dealer": "all_tasks", "query": null, "extra": true}])), Ok(()));
        assert_eq!(r.authorize(2, &json!([{"dealer": "tasks_by_owner", "query": null}])), Ok(()));
        assert_eq!(
            route(&r, &insert(json!({"owner": {"id": null}}))),
            vec![(1, DeltaShape::Insert), (2, DeltaShape::Insert)]
        );
        assert_eq!(route(&r, &insert(json!({"owner": {}}))), vec![(1, DeltaShape::Insert)], "missing is not null");
    }

    #[test]
    fn refused_subscription_registers_nothing() {
        let mut r = router();
        let bad = json!([{"dealer": "all_tasks", "query": null}, {"dealer": "tasks", "query": ["bad"]}]);
        assert!(r.authorize(1, &bad).is_err());
        assert!(!r.contains_subscription(1));
        assert_eq!(route(&r, &insert(json!({}))), vec![]);
    }

    #[test]
    fn duplicate_subscription_ids_are_a_caller_error() {
        let mut r = router();
        assert_eq!(r.authorize(1, &json!([])), Ok(()));
        assert_eq!(r.authorize(1, &json!([])), Err(AuthError::DuplicateSubscription(1)));
    }

    #[test]
    fn prepared_items_are_inserted_whole() {
        let mut r = router();
        let prepared = r.authorizer().prepare(&json!([{"dealer": "tasks", "query": ["==", "done", true]}]));
        assert_eq!(r.insert(1, prepared.expect("valid")), Ok(()));
        assert_eq!(route(&r, &insert(json!({"done": true}))), vec![(1, DeltaShape::Insert)]);
        assert_eq!(route(&r, &insert(json!({"done": 1}))), vec![]);
        let again = r.authorizer().prepare(&json!([])).expect("valid");
        assert_eq!(r.insert(1, again), Err(AuthError::DuplicateSubscription(1)));
    }

    #[test]
    fn broadcast_gets_everything_of_its_model() {
        let mut r = router();
        r.authorize(7, &json!([{"dealer": "all_tasks", "query": null}])).expect("valid");
        assert_eq!(route(&r, &insert(json!(1))), vec![(7, DeltaShape::Insert)]);
        assert_eq!(route(&r, &update(json!(1), json!(2))), vec![(7, DeltaShape::Update)]);
        assert_eq!(route(&r, &delete(json!(null))), vec![(7, DeltaShape::Delete)]);
        assert_eq!(route(&r, &Delta::Insert { model: "Player".into(), data: json!({}) }), vec![]);
    }

    #[test]
    fn simple_keys_compare_by_value() {
        let mut r = router();
        r.authorize(1, &json!([{"dealer": "tasks_by_owner", "query": 5}])).expect("valid");
        r.authorize(2, &json!([{"dealer": "tasks_by_owner", "query": "5"}])).expect("valid");
        r.authorize(3, &json!([{"dealer": "tasks_by_owner", "query": true}])).expect("valid");
        r.authorize(4, &json!([{"dealer": "tasks_by_owner", "query": {"a": [1, 2]}}])).expect("valid");
        assert_eq!(route(&r, &insert(json!({"owner": {"id": 5.0}}))), vec![(1, DeltaShape::Insert)]);
        assert_eq!(route(&r, &insert(json!({"owner": {"id": "5"}}))), vec![(2, DeltaShape::Insert)]);
        assert_eq!(route(&r, &insert(json!({"owner": {"id": 1}}))), vec![]);
        assert_eq!(route(&r, &insert(json!({"owner": {"id": true}}))), vec![(3, DeltaShape::Insert)]);
        assert_eq!(route(&r, &insert(json!({"owner": {"id": {"a": [1.0, 2]}}}))), vec![(4, DeltaShape::Insert)]);
        assert_eq!(route(&r, &insert(json!({"owner": 5}))), vec![], "path through a non-object");
        assert_eq!(
            route(&r, &update(json!({"owner": {"id": 5}}), json!({"owner": {"id": "5"}}))),
            vec![(1, DeltaShape::Delete), (2, DeltaShape::Insert)]
        );
        assert_eq!(
            route(&r, &update(json!({"owner": {"id": 5}, "v": 1}), json!({"owner": {"id": 5.0}, "v": 2}))),
            vec![(1, DeltaShape::Update)]
        );
    }

    #[test]
    fn update_translation_per_subscription() {
        let mut r = router();
        r.authorize(1, &json!([{"dealer": "tasks", "query": ["==", "status", "open"]}])).expect("valid");
        let open = json!({"id": 1, "status": "open"});
        let open2 = json!({"id": 1, "status": "open", "title": "x"});
        let closed = json!({"id": 1, "status": "closed"});
        assert_eq!(route(&r, &update(open.clone(), open2.clone())), vec![(1, DeltaShape::Update)]);
        assert_eq!(route(&r, &update(closed.clone(), open.clone())), vec![(1, DeltaShape::Insert)]);
        assert_eq!(route(&r, &update(open.clone(), closed.clone())), vec![(1, DeltaShape::Delete)]);
        assert_eq!(route(&r, &update(closed.clone(), closed.clone())), vec![]);
        let d = update(open, closed);
        let frame = d.frame(route(&r, &d)[0].1).expect("valid shape").to_value();
        assert_eq!(
            frame,
            json!({"type": "delta", "delta": {"type": "delete", "model": "Task", "data": {"id": 1, "status": "open"}}})
        );
    }

    #[test]
    fn updates_reach_filters_without_equalities_too() {
        let mut r = router();
        r.authorize(1, &json!([{"dealer": "tasks", "query": [">=", "priority", 3]}])).expect("valid");
        r.authorize(2, &json!([{"dealer": "tasks", "query": ["not", ["==", "owner", 1]]}])).expect("valid");
        let low = json!({"priority": 1, "owner": 1});
        let high = json!({"priority": 5, "owner": 2});
        assert_eq!(
            route(&r, &update(low.clone(), high.clone())),
            vec![(1, DeltaShape::Insert), (2, DeltaShape::Insert)]
        );
        assert_eq!(route(&r, &update(high, low)), vec![(1, DeltaShape::Delete), (2, DeltaShape::Delete)]);
    }

    #[test]
    fn at_most_once_per_subscription() {
        let mut r = router();
        r.authorize(
            9,
            &json!([
                {"dealer": "all_tasks", "query": null},
                {"dealer": "all_tasks", "query": 1},
                {"dealer": "tasks_by_owner", "query": 5},
                {"dealer": "tasks_by_owner", "query": 5.0},
                {"dealer": "tasks", "query": ["==", "owner.id", 5]},
                {"dealer": "tasks", "query": ["==", "owner.id", 5]},
                {"dealer": "tasks", "query": [">", "owner.id", 0]},
                {"dealer": "tasks_by_py", "query": {"id": 5}},
            ]),
        )
        .expect("valid");
        let obj = json!({"owner": {"id": 5}});
        assert_eq!(route(&r, &insert(obj.clone())), vec![(9, DeltaShape::Insert)]);
        assert_eq!(route(&r, &update(obj.clone(), obj.clone())), vec![(9, DeltaShape::Update)]);
        assert_eq!(route(&r, &delete(obj)), vec![(9, DeltaShape::Delete)]);
    }

    #[test]
    fn any_item_seeing_old_and_any_seeing_new_makes_an_update() {
        let mut r = router();
        r.authorize(
            1,
            &json!([
                {"dealer": "tasks", "query": ["==", "status", "open"]},
                {"dealer": "tasks_by_owner", "query": 2},
            ]),
        )
        .expect("valid");
        // old seen through the filter only, new through the Simple key only
        let old = json!({"status": "open", "owner": {"id": 1}});
        let new = json!({"status": "done", "owner": {"id": 2}});
        assert_eq!(route(&r, &update(old.clone(), new.clone())), vec![(1, DeltaShape::Update)]);
        let neither = json!({"status": "done", "owner": {"id": 3}});
        assert_eq!(route(&r, &update(old, neither.clone())), vec![(1, DeltaShape::Delete)]);
        assert_eq!(route(&r, &update(neither, new)), vec![(1, DeltaShape::Insert)]);
    }

    #[test]
    fn failing_key_function_skips_only_its_dealer() {
        let mut r = router();
        r.authorize(1, &json!([{"dealer": "tasks_by_py", "query": 3}])).expect("valid");
        r.authorize(2, &json!([{"dealer": "tasks_by_py", "query": 3}, {"dealer": "all_tasks", "query": null}]))
            .expect("valid");
        r.authorize(3, &json!([{"dealer": "tasks_by_owner", "query": 3}])).expect("valid");
        r.authorize(4, &json!([{"dealer": "tasks", "query": ["==", "owner", 3]}])).expect("valid");
        let fine = json!({"owner": 3});
        let boom = json!({"owner": 3, "explode": 1});
        assert_eq!(
            route(&r, &insert(fine.clone())),
            vec![(1, DeltaShape::Insert), (2, DeltaShape::Insert), (4, DeltaShape::Insert)]
        );
        assert_eq!(route(&r, &insert(boom.clone())), vec![(2, DeltaShape::Insert), (4, DeltaShape::Insert)]);
        // failing on either side of an update skips the dealer: sub 2 still sees both
        // through Broadcast, sub 4 sees only the old one through its filter
        let boom_other = json!({"owner": {"id": 3}, "explode": 1});
        assert_eq!(
            route(&r, &update(fine.clone(), boom_other.clone())),
            vec![(2, DeltaShape::Update), (3, DeltaShape::Insert), (4, DeltaShape::Delete)]
        );
        assert_eq!(
            route(&r, &update(boom_other, fine)),
            vec![(2, DeltaShape::Update), (3, DeltaShape::Delete), (4, DeltaShape::Insert)]
        );
        // and the dealer recovers for the next delta
        assert_eq!(route(&r, &delete(json!({"owner": 3}))).len(), 3);
    }

    /// A key function that counts its calls.
    struct Counting(std::sync::atomic::AtomicUsize);
    impl KeyFunction for Counting {
        fn key(&self, data: &Value) -> Result<Value, String> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(data.get("owner").cloned().unwrap_or(Value::Null))
        }
    }

    #[test]
    fn precomputed_function_keys_are_used_and_agree() {
        let counting = Arc::new(Counting(std::sync::atomic::AtomicUsize::new(0)));
        let calls = || counting.0.load(std::sync::atomic::Ordering::SeqCst);
        let dealers = vec![
            Dealer::simple_fn("by_fn", "Task", counting.clone()),
            Dealer::simple_field("by_field", "Task", "owner"),
            Dealer::simple_fn("players_fn", "Player", Arc::new(Python)),
        ];
        assert!(FunctionKeys::needed(&dealers));
        assert!(!FunctionKeys::needed(&dealers[1..2]));
        let mut r = Router::new(dealers.clone()).expect("distinct names");
        r.authorize(1, &json!([{"dealer": "by_fn", "query": 1}])).expect("valid");
        r.authorize(2, &json!([{"dealer": "by_field", "query": 2}])).expect("valid");
        let d = update(json!({"owner": 1}), json!({"owner": 2}));
        let keys = FunctionKeys::compute(r.dealers(), &d);
        assert_eq!(calls(), 2, "old and new, for the one Task function dealer");
        let routed = r.route_with(&d, &keys);
        assert_eq!(calls(), 2, "routing used the precomputed keys");
        assert_eq!(routed, vec![(1, DeltaShape::Delete), (2, DeltaShape::Insert)]);
        assert_eq!(routed, r.route(&d));
        // A failure computed ahead is a failure in routing: the dealer delivers nothing.
        let mut r = Router::new(vec![Dealer::simple_fn("py", "Task", Arc::new(Python))]).expect("one dealer");
        r.authorize(1, &json!([{"dealer": "py", "query": 3}])).expect("valid");
        let boom = insert(json!({"owner": 3, "explode": true}));
        assert_eq!(r.route_with(&boom, &FunctionKeys::compute(r.dealers(), &boom)), vec![]);
        let fine = insert(json!({"owner": 3}));
        assert_eq!(r.route_with(&fine, &FunctionKeys::compute(r.dealers(), &fine)), vec![(1, DeltaShape::Insert)]);
    }

    #[test]
    fn removal_keeps_the_rest_intact() {
        let mut r = router();
        for sub in 0..20_u64 {
            let owner = sub % 3;
            r.authorize(
                sub,
                &json!([
                    {"dealer": "tasks", "query": ["==", "owner", owner]},
                    {"dealer": "tasks_by_owner", "query": owner},
                    {"dealer": "all_tasks", "query": null},
                    {"dealer": "tasks", "query": ["<", "owner", owner]},
                ]),
            )
            .expect("valid");
        }
        for sub in (0..20).step_by(2) {
            assert!(r.remove_subscription(sub));
        }
        assert!(!r.remove_subscription(0), "already removed");
        assert!(!r.remove_subscription(99));
        assert_eq!(r.subscription_count(), 10);
        let routed = route(&r, &insert(json!({"owner": 1})));
        assert_eq!(routed.iter().map(|s| s.0).collect::<Vec<_>>(), (1..20).step_by(2).collect::<Vec<_>>());
        for sub in (1..20).step_by(2) {
            assert!(r.remove_subscription(sub));
        }
        assert_eq!(route(&r, &insert(json!({"owner": 1}))), vec![]);
        // Buckets are dropped when empty, and freed slots are reused.
        let DealerIndex::Filter { paths, scan } = &r.indexes[3] else { panic!("tasks is a Filter dealer") };
        assert!(paths.is_empty() && scan.is_empty(), "paths go with their last item");
        let slots = r.items.len();
        r.authorize(100, &json!([{"dealer": "tasks", "query": ["==", "owner", 1]}])).expect("valid");
        assert_eq!(r.items.len(), slots);
        assert_eq!(route(&r, &insert(json!({"owner": 1.0}))), vec![(100, DeltaShape::Insert)]);
    }

    #[test]
    fn index_prefers_the_smallest_bucket() {
        let mut r = router();
        for sub in 0..100_u64 {
            let q = json!(["and", ["==", "deleted", false], ["==", "owner.id", sub], [">", "n", 0]]);
            r.authorize(sub, &json!([{"dealer": "tasks", "query": q}])).expect("valid");
        }
        let DealerIndex::Filter { paths, scan } = &r.indexes[3] else { panic!("tasks is a Filter dealer") };
        assert!(scan.is_empty());
        let largest = paths.values().flat_map(HashMap::values).map(Vec::len).max();
        assert_eq!(largest, Some(1), "the shared condition does not collect everyone");
        let obj = json!({"deleted": false, "owner": {"id": 42}, "n": 1});
        assert_eq!(route(&r, &insert(obj)), vec![(42, DeltaShape::Insert)]);
    }

    #[test]
    fn router_can_be_shared_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Router>();
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        const PATHS: [&str; 8] = ["k", "a", "b", "owner", "owner.id", "owner.k", "a.b", "missing"];

        fn leaf() -> impl Strategy<Value = Value> {
            prop::sample::select(vec![
                json!(null),
                json!(true),
                json!(false),
                json!(0),
                json!(1),
                json!(1.0),
                json!(-0.0),
                json!(2),
                json!(2.5),
                json!("1"),
                json!("a"),
                json!("b"),
                json!(""),
                json!([1]),
                json!([1.0]),
                json!({"x": 1}),
                json!({}),
            ])
        }

        fn object() -> impl Strategy<Value = Value> {
            let field = prop_oneof![
                3 => leaf(),
                2 => prop::collection::btree_map(prop::sample::select(vec!["id", "k", "b"]), leaf(), 0..3)
                    .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())),
            ];
            prop::collection::btree_map(prop::sample::select(vec!["k", "a", "b", "owner", "explode"]), field, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
        }

        fn filter() -> impl Strategy<Value = Value> {
            let comparison = (
                prop::sample::select(vec!["==", "==", "==", "<", "<=", ">", ">="]),
                prop::sample::select(PATHS.to_vec()),
                leaf(),
            )
                .prop_map(|(op, path, value)| json!([op, path, value]));
            comparison.prop_recursive(3, 12, 3, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(|v| {
                        let mut e = vec![json!("and")];
                        e.extend(v);
                        Value::Array(e)
                    }),
                    prop::collection::vec(inner.clone(), 0..3).prop_map(|v| {
                        let mut e = vec![json!("or")];
                        e.extend(v);
                        Value::Array(e)
                    }),
                    inner.prop_map(|e| json!(["not", e])),
                ]
            })
        }

        fn item() -> impl Strategy<Value = Value> {
            prop_oneof![
                1 => Just(json!({"dealer": "all_tasks", "query": null})),
                2 => leaf().prop_map(|q| json!({"dealer": "tasks_by_owner", "query": q})),
                2 => leaf().prop_map(|q| json!({"dealer": "tasks_by_py", "query": q})),
                5 => filter().prop_map(|q| json!({"dealer": "tasks", "query": q})),
                1 => filter().prop_map(|q| json!({"dealer": "players", "query": q})),
            ]
        }

        fn delta() -> impl Strategy<Value = Delta> {
            (prop::sample::select(vec!["Task", "Task", "Task", "Player"]), 0..3_u8, object(), object()).prop_map(
                |(model, kind, a, b)| match kind {
                    0 => Delta::Insert { model: model.into(), data: a },
                    1 => Delta::Delete { model: model.into(), data: a },
                    _ => Delta::Update { model: model.into(), old_data: a, new_data: b },
                },
            )
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn route_equals_route_naive(
                subs in prop::collection::vec(prop::collection::vec(item(), 0..5), 1..12),
                deltas in prop::collection::vec(delta(), 1..8),
                removed in prop::collection::vec(any::<bool>(), 12),
            ) {
                let mut r = router();
                for (sub, items) in subs.iter().enumerate() {
                    prop_assert_eq!(r.authorize(sub as u64, &Value::Array(items.clone())), Ok(()));
                }
                for d in &deltas {
                    let naive = r.route_naive(d);
                    prop_assert_eq!(&r.route(d), &naive);
                    prop_assert_eq!(&r.route_with(d, &FunctionKeys::compute(r.dealers(), d)), &naive);
                }
                for (sub, remove) in removed.iter().enumerate().take(subs.len()) {
                    if *remove {
                        prop_assert!(r.remove_subscription(sub as u64));
                    }
                }
                // re-add some under new ids so freed slots and emptied buckets get reused
                for (sub, items) in subs.iter().enumerate().step_by(3) {
                    prop_assert_eq!(r.authorize(100 + sub as u64, &Value::Array(items.clone())), Ok(()));
                }
                for d in &deltas {
                    let routed = r.route(d);
                    prop_assert_eq!(&routed, &r.route_naive(d));
                    prop_assert!(routed.windows(2).all(|w| w[0].0 < w[1].0), "sorted, at most once");
                }
            }
        }
    }

    /// Median cost of routing an update through 100,000 Filter subscriptions that each
    /// have an equality condition. Debug builds are several times slower than release;
    /// run with `cargo test --release -- --ignored --nocapture bench_` for the real number.
    #[test]
    #[ignore = "timing benchmark; run explicitly"]
    fn bench_route_100k_filter_subscriptions() {
        use std::time::Instant;
        let mut r = router();
        for sub in 0..100_000_u64 {
            let q = json!(["and", ["==", "owner.id", sub], [">=", "priority", 0]]);
            r.authorize(sub, &json!([{"dealer": "tasks", "query": q}])).expect("valid");
        }
        let mut times = Vec::new();
        for i in 0..2_000_u64 {
            let owner = i * 37 % 100_000;
            let d = update(
                json!({"id": i, "owner": {"id": owner}, "priority": 1, "title": "before"}),
                json!({"id": i, "owner": {"id": owner}, "priority": 2, "title": "after"}),
            );
            let start = Instant::now();
            let routed = r.route(&d);
            times.push(start.elapsed());
            assert_eq!(routed, vec![(owner, DeltaShape::Update)]);
        }
        times.sort();
        let d = update(json!({"owner": {"id": 5}, "priority": 1}), json!({"owner": {"id": 6}, "priority": 1}));
        let start = Instant::now();
        let naive = r.route_naive(&d);
        let naive_time = start.elapsed();
        assert_eq!(naive, r.route(&d));
        println!(
            "route: median {:?}, p99 {:?}; route_naive: {naive_time:?}",
            times[times.len() / 2],
            times[times.len() * 99 / 100]
        );
    }
}
