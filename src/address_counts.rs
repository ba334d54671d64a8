//! How many of something (connections) each client address holds, for the caps per address.

use std::collections::HashMap;
use std::net::IpAddr;

/// Counts by client address; an address whose count falls to zero is forgotten, so the map
/// holds only the addresses that hold something.
#[derive(Debug, Default)]
pub struct AddressCounts(HashMap<IpAddr, usize>);

impl AddressCounts {
    /// Counts one more for `address` unless it holds `cap` already (`None`: no cap); whether it
    /// did.
    pub fn add(&mut self, address: IpAddr, cap: Option<usize>) -> bool {
        let count = self.0.get(&address).copied().unwrap_or(0);
        if cap.is_some_and(|cap| count >= cap) {
            return false;
        }
        self.0.insert(address, count + 1);
        true
    }

    /// Counts one fewer for `address`.
    pub fn remove(&mut self, address: IpAddr) {
        if let Some(count) = self.0.get_mut(&address) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.0.remove(&address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_up_to_the_cap_and_forgets_an_address_at_zero() {
        let (one, two): (IpAddr, IpAddr) = ([127, 0, 0, 1].into(), [127, 0, 0, 2].into());
        let mut counts = AddressCounts::default();
        assert!(counts.add(one, Some(2)) && counts.add(one, Some(2)));
        assert!(!counts.add(one, Some(2)), "a third from one address");
        assert!(counts.add(two, Some(2)), "another address");
        counts.remove(one);
        assert!(counts.add(one, Some(2)), "a place given back");
        assert!(!counts.add(two, Some(0)));
        counts.remove(two);
        counts.remove(one);
        counts.remove(one);
        assert!(counts.0.is_empty());
    }
}
