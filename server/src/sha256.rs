//! A SHA-256 whose state can be saved and continued: the fetcher hashes a download's bytes as it
//! writes them, the engine stores the state with each checkpoint, and a resumed download goes
//! on hashing from there instead of reading its file again.
//!
//! The `sha2` crate's hasher (0.10) cannot be saved, so this one keeps the parts SHA-256 itself
//! carries between blocks: the eight state words, the unprocessed tail (under one block) and
//! the byte count. The compression function is `sha2`'s own (`sha2::compress256`, with its
//! hardware acceleration); only the standard Merkle–Damgård padding of the last block is done
//! here, and the tests hold every result to `Sha256::digest`.

use std::io::Read;

use sha2::digest::generic_array::GenericArray;

/// Bytes of one SHA-256 block.
const BLOCK: usize = 64;

/// SHA-256's initial state (FIPS 180-4, 5.3.3).
const INITIAL: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

/// First byte of an encoded state: the layout below. A later layout gets another number, and
/// a stored state of an unknown layout is refused like a damaged one.
const FORMAT: u8 = 1;

/// Bytes of an encoded state besides the tail: format, byte count, state words, check.
const FIXED_LEN: usize = 1 + 8 + 32 + CHECK_LEN;

/// Bytes of the check that ends an encoded state: the start of the SHA-256 of what precedes
/// it. Eight bytes make an undetected random corruption a 2^-64 event, for eight bytes a row.
const CHECK_LEN: usize = 8;

/// Bytes read at a time when hashing a file's prefix.
const READ_BUFFER: usize = 1024 * 1024;

/// A running SHA-256 that can be encoded, stored, and decoded to continue.
#[derive(Clone, PartialEq, Eq)]
pub struct Hasher {
    state: [u32; 8],
    /// The bytes of the current, incomplete block: `len % 64` of them are used.
    tail: [u8; BLOCK],
    /// Bytes hashed so far.
    len: u64,
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hasher").field("len", &self.len).finish()
    }
}

/// Why a stored state cannot be continued.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unusable SHA-256 state: {0}")]
pub struct StateError(&'static str);

impl Default for Hasher {
    fn default() -> Hasher {
        Hasher::new()
    }
}

impl Hasher {
    /// The state of no bytes hashed.
    pub fn new() -> Hasher {
        Hasher {
            state: INITIAL,
            tail: [0; BLOCK],
            len: 0,
        }
    }

    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    fn tail_len(&self) -> usize {
        (self.len % BLOCK as u64) as usize
    }

    /// Hashes `data` after everything hashed before.
    pub fn update(&mut self, mut data: &[u8]) {
        let used = self.tail_len();
        self.len += data.len() as u64;
        if used > 0 {
            let take = (BLOCK - used).min(data.len());
            self.tail[used..used + take].copy_from_slice(&data[..take]);
            data = &data[take..];
            if used + take < BLOCK {
                return;
            }
            let block = self.tail;
            compress(&mut self.state, &block);
        }
        let mut blocks = data.chunks_exact(BLOCK);
        for block in &mut blocks {
            compress(&mut self.state, block);
        }
        let rest = blocks.remainder();
        self.tail[..rest.len()].copy_from_slice(rest);
    }

    /// Hashes the next `len` bytes of `reader`; fails if it ends before.
    pub fn update_from(&mut self, reader: impl Read, len: u64) -> std::io::Result<()> {
        let mut reader = reader.take(len);
        let mut buf = vec![0u8; READ_BUFFER.min(usize::try_from(len).unwrap_or(READ_BUFFER))];
        let mut read = 0u64;
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                break;
            }
            self.update(&buf[..n]);
            read += n as u64;
        }
        if read < len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("the file ended after {read} of {len} bytes"),
            ));
        }
        Ok(())
    }

    /// The digest of everything hashed, in lower-case hex; the state itself is kept.
    pub fn hex(&self) -> String {
        let mut state = self.state;
        // Padding (FIPS 180-4, 5.1.1): 0x80, zeros to 56 mod 64, then the length in bits.
        let used = self.tail_len();
        let mut last = [0u8; 2 * BLOCK];
        last[..used].copy_from_slice(&self.tail[..used]);
        last[used] = 0x80;
        let end = if used < BLOCK - 8 { BLOCK } else { 2 * BLOCK };
        last[end - 8..end].copy_from_slice(&(self.len.wrapping_mul(8)).to_be_bytes());
        for block in last[..end].chunks_exact(BLOCK) {
            compress(&mut state, block);
        }
        state.iter().map(|word| format!("{word:08x}")).collect()
    }

    /// The state as stored: format, byte count, state words, tail, and a check over them.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FIXED_LEN + self.tail_len());
        out.push(FORMAT);
        out.extend_from_slice(&self.len.to_be_bytes());
        for word in self.state {
            out.extend_from_slice(&word.to_be_bytes());
        }
        out.extend_from_slice(&self.tail[..self.tail_len()]);
        let check = check_of(&out);
        out.extend_from_slice(&check);
        out
    }

    /// A state back from [`Hasher::encode`]'s bytes; anything else (another format, a wrong
    /// length, damaged bytes) is refused.
    pub fn decode(bytes: &[u8]) -> Result<Hasher, StateError> {
        if bytes.len() < FIXED_LEN {
            return Err(StateError("too short"));
        }
        let (body, check) = bytes.split_at(bytes.len() - CHECK_LEN);
        if check != check_of(body) {
            return Err(StateError("its check does not match (damaged)"));
        }
        if body[0] != FORMAT {
            return Err(StateError("unknown format"));
        }
        let len = u64::from_be_bytes(body[1..9].try_into().expect("eight bytes"));
        let mut hasher = Hasher {
            len,
            ..Hasher::new()
        };
        let tail = &body[41..];
        if tail.len() != hasher.tail_len() {
            return Err(StateError("its length does not fit its byte count"));
        }
        for (word, bytes) in hasher.state.iter_mut().zip(body[9..41].chunks_exact(4)) {
            *word = u32::from_be_bytes(bytes.try_into().expect("four bytes"));
        }
        hasher.tail[..tail.len()].copy_from_slice(tail);
        Ok(hasher)
    }
}

/// Compresses one 64-byte block into `state` with `sha2`'s implementation.
fn compress(state: &mut [u32; 8], block: &[u8]) {
    sha2::compress256(state, std::slice::from_ref(GenericArray::from_slice(block)));
}

/// The check of an encoded state's leading bytes.
fn check_of(body: &[u8]) -> [u8; CHECK_LEN] {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(body);
    digest[..CHECK_LEN]
        .try_into()
        .expect("a digest is 32 bytes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + i / 7) as u8).collect()
    }

    fn reference(data: &[u8]) -> String {
        format!("{:x}", Sha256::digest(data))
    }

    #[test]
    fn the_digest_is_sha256_for_any_length() {
        // Every tail length, both padding cases (one block or two), and several blocks.
        for len in (0..300).chain([1000, 4096, 65_537]) {
            let bytes = data(len);
            let mut h = Hasher::new();
            h.update(&bytes);
            assert_eq!(h.hex(), reference(&bytes), "length {len}");
            assert_eq!(h.len(), len as u64);
        }
    }

    #[test]
    fn the_digest_is_sha256_for_any_split_points() {
        let bytes = data(1000);
        let want = reference(&bytes);
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..500 {
            let mut h = Hasher::new();
            let mut at = 0;
            while at < bytes.len() {
                let n = rng.usize(0..=(bytes.len() - at).min(150));
                h.update(&bytes[at..at + n]);
                at += n;
            }
            assert_eq!(h.hex(), want);
        }
    }

    #[test]
    fn a_decoded_state_continues_where_it_was_encoded() {
        let bytes = data(777);
        for split in [0, 1, 63, 64, 65, 128, 500, 777] {
            let mut h = Hasher::new();
            h.update(&bytes[..split]);
            let encoded = h.encode();
            assert_eq!(encoded.len(), FIXED_LEN + split % 64);
            let mut resumed = Hasher::decode(&encoded).unwrap();
            assert_eq!(resumed, h);
            resumed.update(&bytes[split..]);
            assert_eq!(resumed.hex(), reference(&bytes), "split at {split}");
        }
    }

    #[test]
    fn a_damaged_or_misfit_state_is_refused() {
        let mut h = Hasher::new();
        h.update(&data(100));
        let good = h.encode();
        assert!(Hasher::decode(&good[..good.len() - 1]).is_err());
        assert_eq!(Hasher::decode(&good[..10]), Err(StateError("too short")));
        assert!(Hasher::decode(&[]).is_err());
        // Any single flipped bit is caught by the check.
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x10;
            assert!(Hasher::decode(&bad).is_err(), "flip at {i} accepted");
        }
        // A well-formed state whose tail does not fit its byte count.
        let mut misfit = good[..good.len() - CHECK_LEN - 1].to_vec();
        let check = check_of(&misfit);
        misfit.extend_from_slice(&check);
        assert_eq!(
            Hasher::decode(&misfit),
            Err(StateError("its length does not fit its byte count"))
        );
    }

    #[test]
    fn a_reader_prefix_is_hashed_and_a_short_one_fails() {
        let bytes = data(5000);
        let mut h = Hasher::new();
        h.update_from(&bytes[..], 3000).unwrap();
        assert_eq!(h.hex(), reference(&bytes[..3000]));
        let err = Hasher::new().update_from(&bytes[..], 6000).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    }
}
