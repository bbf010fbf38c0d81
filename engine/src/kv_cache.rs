//! Paged KV cache bookkeeping: fixed-size blocks, a free list and per-sequence block tables.
//!
//! The backend owns the KV memory (host RAM for the CPU backend, device memory for CUDA);
//! this module only decides which block holds which positions, the same for every backend.

use crate::error::{Error, Result};

/// Hands out KV blocks from a fixed pool.
#[derive(Debug)]
pub struct BlockAllocator {
    block_size: usize,
    num_blocks: usize,
    free: Vec<u32>,
}

impl BlockAllocator {
    /// A pool of `num_blocks` blocks of `block_size` positions each.
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        // Hand out low block ids first (pop takes from the end).
        let free = (0..num_blocks as u32).rev().collect();
        Self {
            block_size,
            num_blocks,
            free,
        }
    }

    /// Positions per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Blocks in the pool.
    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    /// Blocks not in use.
    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    /// Blocks needed to hold `positions` positions.
    pub fn blocks_for(&self, positions: usize) -> usize {
        positions.div_ceil(self.block_size)
    }
}

/// The blocks of one sequence, in position order.
#[derive(Debug, Default, Clone)]
pub struct BlockTable {
    blocks: Vec<u32>,
}

impl BlockTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Block ids in position order.
    pub fn blocks(&self) -> &[u32] {
        &self.blocks
    }

    /// Positions the table can hold now.
    pub fn capacity(&self, alloc: &BlockAllocator) -> usize {
        self.blocks.len() * alloc.block_size
    }

    /// Extra blocks needed to hold `positions` positions.
    pub fn blocks_missing(&self, alloc: &BlockAllocator, positions: usize) -> usize {
        alloc.blocks_for(positions).saturating_sub(self.blocks.len())
    }

    /// Grows the table to hold `positions` positions; on failure nothing is taken.
    pub fn reserve(&mut self, alloc: &mut BlockAllocator, positions: usize) -> Result<()> {
        let missing = self.blocks_missing(alloc, positions);
        if missing > alloc.free.len() {
            return Err(Error::KvCacheExhausted(format!(
                "{missing} blocks needed, {} free of {}",
                alloc.free.len(),
                alloc.num_blocks
            )));
        }
        for _ in 0..missing {
            if let Some(b) = alloc.free.pop() {
                self.blocks.push(b);
            }
        }
        Ok(())
    }

    /// Returns every block to the pool.
    pub fn release(&mut self, alloc: &mut BlockAllocator) {
        alloc.free.extend(self.blocks.drain(..).rev());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_and_release() {
        let mut a = BlockAllocator::new(4, 16);
        let mut t1 = BlockTable::new();
        t1.reserve(&mut a, 17).expect("fits");
        assert_eq!(t1.blocks(), &[0, 1]);
        assert_eq!(t1.capacity(&a), 32);
        t1.reserve(&mut a, 32).expect("no growth needed");
        assert_eq!(a.num_free(), 2);
        let mut t2 = BlockTable::new();
        assert!(t2.reserve(&mut a, 49).is_err());
        assert_eq!(a.num_free(), 2, "a failed reserve takes nothing");
        t2.reserve(&mut a, 20).expect("fits");
        assert_eq!(a.num_free(), 0);
        t1.release(&mut a);
        assert_eq!(a.num_free(), 2);
        assert!(t1.blocks().is_empty());
        t2.release(&mut a);
        assert_eq!(a.num_free(), 4);
    }
}
