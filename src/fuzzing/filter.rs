//! The `filter` target: the filter language and routing, without a server.
//!
//! An arbitrary expression, under arbitrary bounds, is parsed: it must be refused with an
//! error, or accepted within its bounds. An accepted one is evaluated against arbitrary
//! objects, and what it claims every match requires (`required_equalities`, which the router
//! indexes on) must hold for every object it matches. Then subscriptions of arbitrary items
//! are authorized on a router with every kind of dealer, and every delta is routed:
//! `Router::route` (through the indexes) and `route_with` (keys computed ahead) must equal
//! `Router::route_naive` (every item evaluated), the property the unit tests hold on
//! generated cases, and each subscription must receive what `shape_for` (the replay of one
//! subscription) says; again after some subscriptions are removed and others added.

use arbitrary::{Result, Unstructured};
use serde_json::Value;

use super::gen;
use super::server::dealers;
use crate::datasync::{Delta, Filter, FilterLimits, FunctionKeys, Router, ValueKey};
use crate::value::lookup;

/// Runs one input of the `filter` target.
pub fn filter(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let _ = expression(&mut u).and_then(|()| routing(&mut u));
}

fn expression(u: &mut Unstructured<'_>) -> Result<()> {
    let limits = if u.arbitrary()? {
        FilterLimits::default()
    } else {
        FilterLimits { max_depth: u.int_in_range(0..=12)?, max_size: u.int_in_range(0..=64)? }
    };
    let expression = gen::expression(u, 6)?;
    let objects = (0..u.int_in_range(0..=4)?).map(|_| gen::object(u, gen::DEPTH)).collect::<Result<Vec<_>>>()?;
    let Ok(filter) = Filter::parse_within(&expression, limits) else {
        return Ok(());
    };
    let (size, depth) = measure(&filter);
    assert!(size <= limits.max_size, "{size} parts accepted under a bound of {}: {expression}", limits.max_size);
    assert!(depth <= limits.max_depth, "{depth} levels accepted under a bound of {}: {expression}", limits.max_depth);
    let required = filter.required_equalities();
    let negation = Filter::Not(Box::new(filter.clone()));
    for object in &objects {
        let matches = filter.matches(object);
        assert_ne!(matches, negation.matches(object));
        if matches {
            for (path, key) in &required {
                let found = lookup(object, path).map(ValueKey::of);
                assert_eq!(found.as_ref(), Some(key), "{expression} matches {object} but not its condition on {path}");
            }
        }
    }
    Ok(())
}

/// The number of expressions in `filter`, and how deeply they nest.
fn measure(filter: &Filter) -> (usize, usize) {
    match filter {
        Filter::Compare { .. } => (1, 1),
        Filter::Not(inner) => {
            let (size, depth) = measure(inner);
            (size + 1, depth + 1)
        }
        Filter::And(operands) | Filter::Or(operands) => operands
            .iter()
            .map(measure)
            .fold((1, 1), |(size, depth), (more, deeper)| (size + more, depth.max(deeper + 1))),
    }
}

fn routing(u: &mut Unstructured<'_>) -> Result<()> {
    let mut router = Router::new(dealers()).expect("distinct dealer names");
    let subscriptions = u.int_in_range(1..=8_u64)?;
    for id in 0..subscriptions {
        let _ = router.authorize(id, &gen::items(u)?);
    }
    let deltas = (0..u.int_in_range(1..=4)?).map(|_| delta(u)).collect::<Result<Vec<_>>>()?;
    check_routes(&router, &deltas);
    for id in 0..subscriptions {
        if u.arbitrary()? {
            router.remove_subscription(id);
        }
    }
    // New subscriptions reuse the freed slots and emptied buckets.
    for id in subscriptions..subscriptions + u.int_in_range(0..=4)? {
        let _ = router.authorize(id, &gen::items(u)?);
    }
    check_routes(&router, &deltas);
    Ok(())
}

fn check_routes(router: &Router, deltas: &[Delta]) {
    for delta in deltas {
        let naive = router.route_naive(delta);
        assert_eq!(router.route(delta), naive, "route and route_naive disagree on {delta:?}");
        let keys = FunctionKeys::compute(router.dealers(), delta);
        assert_eq!(router.route_with(delta, &keys), naive, "route_with and route_naive disagree on {delta:?}");
        assert!(naive.windows(2).all(|pair| pair[0].0 < pair[1].0), "each subscription at most once, in order");
        for id in 0..16 {
            let expected_shape = naive.iter().find(|(sub, _)| *sub == id).map(|&(_, shape)| shape);
            assert_eq!(router.shape_for(id, delta, &keys), expected_shape, "the replay of {id} differs on {delta:?}");
        }
    }
}

/// A valid delta of either model (invalid ones never reach the router).
fn delta(u: &mut Unstructured<'_>) -> Result<Delta> {
    let model = if u.ratio(3, 4)? { "Task" } else { "Player" }.to_owned();
    Ok(match u.choose_index(3)? {
        0 => Delta::Insert { model, data: object_or_value(u)? },
        1 => Delta::Delete { model, data: object_or_value(u)? },
        _ => Delta::Update { model, new_data: object_or_value(u)?, old_data: object_or_value(u)? },
    })
}

fn object_or_value(u: &mut Unstructured<'_>) -> Result<Value> {
    if u.ratio(1, 16)? {
        gen::value(u, 1)
    } else {
        gen::object(u, gen::DEPTH)
    }
}
