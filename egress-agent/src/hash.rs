//! FNV-1a (64-bit): stable across builds and machines, which pinned ids and policy digests
//! need; not a defence against crafted collisions (nothing here depends on that).

pub fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}
