//! Request ids: six characters a person can read out (no 0/o, 1/l), one
//! of 32⁶ = 2³⁰. The store numbers its requests and passes each number
//! through a keyed permutation of 0..2³⁰ (a four-round Feistel network
//! over two 15-bit halves), so an id is unique by construction: never
//! given twice, even years after its request left the store for the
//! audit log, where `!status <id>` still finds it. Random ids, as before,
//! would have collided with the archived ones within a year at a
//! thousand requests a day.

/// How many ids there are.
pub(super) const SPACE: u64 = 1 << 30;

const ALPHABET: &[u8; 32] = b"abcdefghijkmnpqrstuvwxyz23456789";

/// A 64-bit mix (SplitMix64's finalizer): every input bit reaches every
/// output bit.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The id numbered `n` under `key` (None past the last).
pub(super) fn nth(n: u64, key: u64) -> Option<String> {
    if n >= SPACE {
        return None;
    }
    let (mut l, mut r) = (n >> 15, n & 0x7fff);
    for round in 0..4u64 {
        let f = mix(key ^ (round << 40) ^ r) & 0x7fff;
        (l, r) = (r, l ^ f);
    }
    let mut x = (l << 15) | r;
    Some(
        (0..6)
            .map(|_| {
                let c = ALPHABET[(x % 32) as usize] as char;
                x /= 32;
                c
            })
            .collect(),
    )
}

/// A store's key: random where the system gives randomness, else drawn
/// from the time and the process (ids stay unique either way; only how
/// well the next one is hidden depends on it).
pub(super) fn new_key(now_ms: u64) -> u64 {
    match crate::store::random_bytes::<8>() {
        Ok(b) => u64::from_le_bytes(b),
        Err(_) => mix(now_ms ^ (u64::from(std::process::id()) << 32)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_six_readable_characters_and_never_repeat() {
        let key = 0x05ee_d1d5;
        let mut seen = std::collections::HashSet::new();
        for n in (0..200_000).chain(SPACE - 1_000..SPACE) {
            let id = nth(n, key).unwrap();
            assert_eq!(id.len(), 6);
            assert!(id.bytes().all(|c| ALPHABET.contains(&c)), "{id}");
            assert!(seen.insert(id), "{n}");
        }
        assert_eq!(nth(SPACE, key), None);
        // Consecutive numbers give unrelated ids.
        let (a, b) = (nth(7, key).unwrap(), nth(8, key).unwrap());
        assert!(a.chars().zip(b.chars()).filter(|(x, y)| x == y).count() < 4);
    }
}
