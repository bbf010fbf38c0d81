//! Sealing and opening the chunks of one message on several host threads, each thread taking
//! a contiguous run of chunks (so each works on one contiguous piece of every buffer).

use std::ops::Range;

use super::chunk::{ChunkCipher, TAG_LEN};
use super::error::ChannelError;
use super::frame::MessageParams;

/// A contiguous run of chunks of a message.
#[derive(Debug, Clone)]
struct Part {
    /// Index of its first chunk.
    first: u32,
    /// Its chunks, as indices into the message's chunks.
    chunks: Range<usize>,
    /// Its bytes, as offsets into the message's plaintext (or ciphertext).
    bytes: Range<usize>,
}

/// Cuts the chunks of `params` into `threads` runs of nearly equal length.
fn parts(params: &MessageParams, threads: usize) -> Vec<Part> {
    let n = params.chunks() as usize;
    let (cs, len) = (params.chunk_size as usize, params.len as usize);
    let t = threads.clamp(1, n);
    (0..t)
        .map(|k| {
            let chunks = n * k / t..n * (k + 1) / t;
            let bytes = (chunks.start * cs).min(len)..(chunks.end * cs).min(len);
            // `chunks.start < n <= u32::MAX`: the channel checked the chunk count.
            Part {
                first: chunks.start as u32,
                chunks,
                bytes,
            }
        })
        .collect()
}

/// Cuts `buf` into consecutive pieces of the given lengths (which add up to at most its length).
fn split_mut(mut buf: &mut [u8], lens: impl Iterator<Item = usize>) -> Vec<&mut [u8]> {
    lens.map(|l| {
        let (head, tail) = std::mem::take(&mut buf).split_at_mut(l);
        buf = tail;
        head
    })
    .collect()
}

/// Runs `work` on every job, the first on this thread and the others on scoped threads, and
/// returns the error of the first job (in chunk order) that failed.
fn run<J: Send>(
    jobs: Vec<J>,
    work: impl Fn(J) -> Result<(), ChannelError> + Sync,
) -> Result<(), ChannelError> {
    let mut jobs = jobs.into_iter();
    let Some(first) = jobs.next() else { return Ok(()) };
    if jobs.len() == 0 {
        return work(first);
    }
    let work = &work;
    std::thread::scope(|s| {
        let handles: Vec<_> = jobs.map(|job| s.spawn(move || work(job))).collect();
        let mut result = work(first);
        for handle in handles {
            let r = handle.join().unwrap_or(Err(ChannelError::WorkerPanicked));
            if result.is_ok() {
                result = r;
            }
        }
        result
    })
}

/// The bytes of chunk `k` of a part of `part_len` bytes.
fn chunk_bytes(k: usize, cs: usize, part_len: usize) -> Range<usize> {
    (k * cs).min(part_len)..((k + 1) * cs).min(part_len)
}

/// Seals `plaintext` into `frame` (`params.frame_len()` bytes: ciphertext, then the tags).
pub(crate) fn seal_frame(
    cipher: &ChunkCipher,
    params: &MessageParams,
    plaintext: &[u8],
    frame: &mut [u8],
    threads: usize,
) -> Result<(), ChannelError> {
    let parts = parts(params, threads);
    let (ciphertext, tags) = frame.split_at_mut(plaintext.len());
    let cts = split_mut(ciphertext, parts.iter().map(|p| p.bytes.len()));
    let tags = split_mut(tags, parts.iter().map(|p| p.chunks.len() * TAG_LEN));
    let jobs: Vec<_> = parts.into_iter().zip(cts).zip(tags).collect();
    let cs = params.chunk_size as usize;
    run(jobs, |((part, ct), tags)| {
        let pt = &plaintext[part.bytes];
        for ((k, tag), i) in tags.chunks_exact_mut(TAG_LEN).enumerate().zip(part.first..) {
            let r = chunk_bytes(k, cs, pt.len());
            tag.copy_from_slice(&cipher.seal(&params.iv(i), &params.aad(i), &pt[r.clone()], &mut ct[r])?);
        }
        Ok(())
    })
}

/// Opens `frame` into `dst` (`params.len` bytes): checks every tag first, on all threads, and
/// writes `dst` only when all of them match.
pub(crate) fn open_frame(
    cipher: &ChunkCipher,
    params: &MessageParams,
    frame: &[u8],
    dst: &mut [u8],
    threads: usize,
) -> Result<(), ChannelError> {
    let parts = parts(params, threads);
    let (ciphertext, tags) = frame.split_at(dst.len());
    let cs = params.chunk_size as usize;
    run(parts.clone(), |part| {
        let ct = &ciphertext[part.bytes.clone()];
        let tags = &tags[part.chunks.start * TAG_LEN..part.chunks.end * TAG_LEN];
        for ((k, tag), i) in tags.chunks_exact(TAG_LEN).enumerate().zip(part.first..) {
            if !cipher.verify(
                &params.iv(i),
                &params.aad(i),
                &ct[chunk_bytes(k, cs, ct.len())],
                tag,
            ) {
                return Err(ChannelError::Authentication { chunk: i });
            }
        }
        Ok(())
    })?;
    let dsts = split_mut(dst, parts.iter().map(|p| p.bytes.len()));
    run(parts.into_iter().zip(dsts).collect(), |(part, out)| {
        let ct = &ciphertext[part.bytes];
        for (k, i) in (0..part.chunks.len()).zip(part.first..) {
            let r = chunk_bytes(k, cs, ct.len());
            cipher.decrypt(&params.iv(i), &ct[r.clone()], &mut out[r])?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cc::keys::Direction;

    fn params(len: u64, chunk_size: u32) -> MessageParams {
        MessageParams {
            channel_id: 1,
            direction: Direction::HostToDevice,
            epoch: 0,
            seq: 0,
            first_counter: 0,
            len,
            chunk_size,
        }
    }

    #[test]
    fn parts_cover_every_chunk_once() {
        for (len, cs, threads) in [(0, 16, 3), (10, 16, 3), (100, 16, 3), (160, 16, 3), (1000, 32, 7)] {
            let p = params(len, cs);
            let parts = parts(&p, threads);
            assert_eq!(parts.len(), threads.min(p.chunks() as usize));
            let mut next_chunk = 0;
            let mut next_byte = 0;
            for part in &parts {
                assert_eq!(part.chunks.start, next_chunk);
                assert_eq!(part.first as usize, next_chunk);
                assert_eq!(part.bytes.start, next_byte);
                assert!(!part.chunks.is_empty());
                next_chunk = part.chunks.end;
                next_byte = part.bytes.end;
            }
            assert_eq!(next_chunk, p.chunks() as usize);
            assert_eq!(next_byte as u64, len);
        }
    }
}
