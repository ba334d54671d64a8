//! `routing`: the DataSync router micro-benchmark (`crate::routing`), in this process.

use super::services::ServiceSizes;
use crate::report::Report;

/// `routing`: the router micro-benchmark, in this process.
pub(super) fn routing(sizes: &ServiceSizes, report: &mut Report) -> Result<(), String> {
    let measured = crate::routing::measure(sizes.routing_subs, sizes.routing_deltas)?;
    for m in &measured {
        crate::routing::print(m);
    }
    crate::routing::record(report, &measured);
    Ok(())
}
