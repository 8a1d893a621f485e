//! RFC 6962 (9162) Merkle trees over the audit entries of a sealed
//! segment: the root a segment's footer and seal checkpoint carry, and the
//! inclusion proof that shows one entry belongs to it without the rest of
//! the log. A leaf is an entry's hash (its 32 bytes); `leaf_hash` is
//! SHA-256(0x00 ‖ leaf), a node SHA-256(0x01 ‖ left ‖ right), so anyone
//! with sha256 can check a proof by hand (`docs/` shows how).

use sha2::{Digest, Sha256};

/// A node's or leaf's hash.
pub type Hash = [u8; 32];

/// SHA-256(0x00 ‖ `leaf`).
pub fn leaf_hash(leaf: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(leaf);
    h.finalize().into()
}

/// SHA-256(0x01 ‖ `left` ‖ `right`).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The largest power of two smaller than `n` (n > 1).
fn split(n: usize) -> usize {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

/// MTH over leaf hashes `leaves` (the empty tree: SHA-256 of nothing).
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => Sha256::digest([]).into(),
        1 => leaves[0],
        n => {
            let k = split(n);
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// PATH(index, leaves): the audit path of leaf `index`, leaf side first.
pub fn inclusion_proof(index: usize, leaves: &[Hash]) -> Vec<Hash> {
    let n = leaves.len();
    if n <= 1 || index >= n {
        return Vec::new();
    }
    let k = split(n);
    if index < k {
        let mut p = inclusion_proof(index, &leaves[..k]);
        p.push(root(&leaves[k..]));
        p
    } else {
        let mut p = inclusion_proof(index - k, &leaves[k..]);
        p.push(root(&leaves[..k]));
        p
    }
}

/// Whether `proof` shows leaf hash `leaf` at `index` in a tree of `size`
/// leaves whose root is `root` (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(index: u64, size: u64, leaf: &Hash, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && r == *root
}

/// Lowercase hex of `h`.
pub fn to_hex(h: &Hash) -> String {
    crate::audit::hex(h)
}

/// `s` (64 hex digits) as a hash.
pub fn from_hex(s: &str) -> Option<Hash> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Certificate Transparency's reference leaves and roots (sizes 0..=8).
    const LEAVES: [&str; 8] = [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ];
    const ROOTS: [&str; 9] = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    fn leaves() -> Vec<Hash> {
        LEAVES
            .iter()
            .map(|l| {
                let bytes: Vec<u8> = (0..l.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&l[i..i + 2], 16).unwrap())
                    .collect();
                leaf_hash(&bytes)
            })
            .collect()
    }

    #[test]
    fn roots_match_the_reference() {
        let l = leaves();
        for n in 0..=8 {
            assert_eq!(to_hex(&root(&l[..n])), ROOTS[n], "size {n}");
        }
    }

    #[test]
    fn proofs_match_the_reference_and_verify() {
        let l = leaves();
        let p = inclusion_proof(0, &l);
        let want = [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ];
        assert_eq!(p.iter().map(to_hex).collect::<Vec<_>>(), want);
        let p = inclusion_proof(5, &l);
        assert_eq!(
            to_hex(&p[0]),
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"
        );
        // Every leaf of every size verifies; a wrong leaf, index or root not.
        let many: Vec<Hash> = (0..37u8)
            .map(|i| leaf_hash(&[i, i.wrapping_mul(7)]))
            .collect();
        for n in 1..=many.len() {
            let r = root(&many[..n]);
            for i in 0..n {
                let p = inclusion_proof(i, &many[..n]);
                assert!(
                    verify_inclusion(i as u64, n as u64, &many[i], &p, &r),
                    "{i}/{n}"
                );
                assert!(
                    !verify_inclusion(i as u64, n as u64, &many[(i + 1) % 37], &p, &r)
                        || n == 1 && i == 0 && many.len() == 1
                );
                if n > 1 {
                    assert!(!verify_inclusion(
                        ((i + 1) % n) as u64,
                        n as u64,
                        &many[i],
                        &p,
                        &r
                    ));
                }
            }
        }
    }
}
