//! Subscription tokens: the secret a backend hands to a browser so it can acquire a
//! subscription.
//!
//! Whoever holds a waiting token can acquire its subscription, so a token must not be
//! guessable: 32 characters from `[a-z0-9]` (about 165 bits), each drawn uniformly from a
//! CSPRNG. We use `rand::rng()` (the thread-local `ThreadRng`): a `ChaCha12` CSPRNG seeded
//! from the operating system and periodically reseeded, so it is as unpredictable as
//! `OsRng` for this purpose while costing no system call per token.

use rand::Rng;

/// The number of characters in a token.
pub const TOKEN_LENGTH: usize = 32;

/// The characters a token is made of.
pub const TOKEN_ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// A fresh random subscription token.
#[must_use]
pub fn new_token() -> String {
    let mut rng = rand::rng();
    // `random_range` samples without modulo bias, so every character is equally likely.
    (0..TOKEN_LENGTH).map(|_| char::from(TOKEN_ALPHABET[rng.random_range(0..TOKEN_ALPHABET.len())])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn tokens_have_the_protocol_shape() {
        for _ in 0..100 {
            let token = new_token();
            assert_eq!(token.len(), TOKEN_LENGTH);
            assert!(token.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()), "{token}");
        }
    }

    #[test]
    fn tokens_differ_and_use_the_whole_alphabet() {
        let tokens: HashSet<String> = (0..1000).map(|_| new_token()).collect();
        assert_eq!(tokens.len(), 1000);
        let used: HashSet<u8> = tokens.iter().flat_map(|t| t.bytes()).collect();
        assert_eq!(used.len(), TOKEN_ALPHABET.len(), "32,000 draws reach all 36 characters");
    }
}
