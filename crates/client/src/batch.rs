//! How batch calls are cut into requests: pure functions of item sizes and budgets.
//!
//! A `set_many` becomes several `SetMany` requests so that no request frame nears the node's
//! frame limit and no request carries an unbounded amount of streamed data: inline values
//! (and keys) count against a frame budget, streamed values against a streamed-bytes budget,
//! and every request has an item cap. An item too large for any budget on its own still
//! travels, alone in its request (a single value is bounded by the value limit instead).
//!
//! A `get_many` is cut the same way (keys count against the frame budget) with a key cap
//! from [`get_batch_len`]: a node keeps the inline payloads of one answer within half its
//! frame limit and streams the rest after the frame, so an answer frame holds at most half a
//! frame of payloads plus each entry's metadata, and the cap keeps the metadata within the
//! other half.
//!
//! Batch calls first group their items by owner (see [`crate::routing`]); these functions
//! cut one owner's group.

use std::ops::Range;

use strata_proto::Format;

/// Frame bytes a `SetMany` item costs beyond its key and inline payload: postcard length
/// prefixes, the format tag and fields. Deliberately generous.
const ITEM_OVERHEAD: usize = 32;

/// Frame bytes an answered entry costs beyond its inline payload: its metadata (times, size,
/// format, version, checksum). Deliberately generous.
const ENTRY_OVERHEAD: usize = 256;

/// What one item of a batch costs a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ItemCost {
    /// Bytes inside the request frame.
    pub(crate) frame: usize,
    /// Bytes streamed after the frame.
    pub(crate) streamed: u64,
}

impl ItemCost {
    /// The cost of a `SetMany` item: its key and format in the frame, and its payload either
    /// inline (`streamed == false`) or after the frame.
    pub(crate) fn of_set(key: &str, format: &Format, payload_len: u64, streamed: bool) -> Self {
        let format_bytes = match format {
            Format::Tensor { shape, .. } => 10 * shape.len(),
            _ => 0,
        };
        let fixed = ITEM_OVERHEAD + key.len() + format_bytes;
        if streamed {
            Self {
                frame: fixed,
                streamed: payload_len,
            }
        } else {
            Self {
                frame: fixed.saturating_add(usize::try_from(payload_len).unwrap_or(usize::MAX)),
                streamed: 0,
            }
        }
    }
}

impl ItemCost {
    /// The cost of a `GetMany` key: the key in the frame.
    pub(crate) fn of_get(key: &str) -> Self {
        Self {
            frame: ITEM_OVERHEAD + key.len(),
            streamed: 0,
        }
    }
}

/// Limits of one batch request.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Budget {
    /// Bytes inside one request frame.
    pub(crate) frame_bytes: usize,
    /// Bytes streamed after one request frame.
    pub(crate) streamed_bytes: u64,
    /// Items in one request.
    pub(crate) max_items: usize,
}

/// Cuts items (in order) into consecutive ranges, each within the budget, greedily: a request
/// is closed when the next item would overflow it. Every item lands in exactly one range.
pub(crate) fn plan(costs: &[ItemCost], budget: Budget) -> Vec<Range<usize>> {
    let mut batches = Vec::new();
    let mut start = 0;
    let (mut frame, mut streamed) = (0usize, 0u64);
    for (i, cost) in costs.iter().enumerate() {
        let overflows = frame.saturating_add(cost.frame) > budget.frame_bytes
            || streamed.saturating_add(cost.streamed) > budget.streamed_bytes
            || i - start >= budget.max_items;
        if overflows && i > start {
            batches.push(start..i);
            start = i;
            frame = 0;
            streamed = 0;
        }
        frame = frame.saturating_add(cost.frame);
        streamed = streamed.saturating_add(cost.streamed);
    }
    if start < costs.len() {
        batches.push(start..costs.len());
    }
    batches
}

/// Most keys per `GetMany` request: as many as keep the metadata of every answered entry
/// within half the frame limit (the node fills at most the other half with inline payloads),
/// and at most `max_items`.
pub(crate) fn get_batch_len(max_frame_bytes: u32, max_items: usize) -> usize {
    let half_frame = max_frame_bytes as usize / 2;
    (half_frame / ENTRY_OVERHEAD).clamp(1, max_items.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_proto::DType;

    const BUDGET: Budget = Budget {
        frame_bytes: 1000,
        streamed_bytes: 10_000,
        max_items: 4,
    };

    fn inline(n: usize) -> ItemCost {
        ItemCost {
            frame: n,
            streamed: 0,
        }
    }

    fn streamed(n: u64) -> ItemCost {
        ItemCost {
            frame: 10,
            streamed: n,
        }
    }

    /// Every item is in exactly one range, in order.
    fn assert_partition(ranges: &[Range<usize>], len: usize) {
        let mut next = 0;
        for r in ranges {
            assert_eq!(r.start, next);
            assert!(r.end > r.start, "no empty batch");
            next = r.end;
        }
        assert_eq!(next, len);
    }

    #[test]
    fn nothing_to_send_means_no_request() {
        assert!(plan(&[], BUDGET).is_empty());
    }

    #[test]
    fn inline_items_fill_the_frame_budget() {
        let costs = [inline(400), inline(400), inline(400), inline(100)];
        let ranges = plan(&costs, BUDGET);
        assert_eq!(ranges, vec![0..2, 2..4]);
        assert_partition(&ranges, costs.len());
    }

    #[test]
    fn streamed_bytes_have_their_own_budget() {
        let costs = [
            streamed(6_000),
            streamed(6_000),
            inline(100),
            streamed(3_000),
        ];
        let ranges = plan(&costs, BUDGET);
        assert_eq!(ranges, vec![0..1, 1..4]);
    }

    #[test]
    fn item_count_is_capped() {
        let costs = vec![inline(1); 10];
        let ranges = plan(&costs, BUDGET);
        assert_eq!(ranges, vec![0..4, 4..8, 8..10]);
    }

    #[test]
    fn an_oversized_item_travels_alone() {
        let costs = [inline(10), inline(5_000), streamed(50_000), inline(10)];
        let ranges = plan(&costs, BUDGET);
        assert_eq!(ranges, vec![0..1, 1..2, 2..3, 3..4]);
        assert_partition(&ranges, costs.len());
    }

    #[test]
    fn costs_count_keys_and_inline_payloads_in_the_frame() {
        let c = ItemCost::of_set("abc", &Format::Bytes, 100, false);
        assert_eq!(c.frame, ITEM_OVERHEAD + 3 + 100);
        assert_eq!(c.streamed, 0);
        let tensor = Format::Tensor {
            dtype: DType::F32,
            shape: vec![1, 2, 3],
        };
        let c = ItemCost::of_set("abc", &tensor, 1 << 20, true);
        assert_eq!(c.frame, ITEM_OVERHEAD + 3 + 30);
        assert_eq!(c.streamed, 1 << 20);
    }

    #[test]
    fn get_batches_keep_worst_case_answers_under_the_frame_limit() {
        let frame = 16usize << 20;
        let n = get_batch_len(16 << 20, 1000);
        assert_eq!(n, 1000, "capped by items");
        // Half a frame of inline payloads (the node's answer budget) plus the metadata.
        assert!(frame / 2 + n * ENTRY_OVERHEAD <= frame);
        let n = get_batch_len(16 << 20, 1_000_000);
        assert_eq!(n, 32_768, "capped by metadata");
        assert!(frame / 2 + n * ENTRY_OVERHEAD <= frame);
        assert_eq!(get_batch_len(1 << 10, 1000), 2);
        assert_eq!(get_batch_len(100, 1000), 1, "at least one");
        assert_eq!(ItemCost::of_get("abc").frame, ITEM_OVERHEAD + 3);
    }
}
