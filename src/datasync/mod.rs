//! DataSync: dealers, filters, deltas and the router that decides which subscriptions a delta
//! concerns. (Being written; see issue 3.)
