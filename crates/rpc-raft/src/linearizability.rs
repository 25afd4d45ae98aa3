//! A linearizability checker for recorded client histories.
//!
//! Wing & Gong's search with Lowe's memoization, as in porcupine: walk the history's
//! call/return events, tentatively linearize any operation whose call is reached,
//! backtrack on a return that cannot be explained, and never revisit a
//! (set of linearized operations, model state) pair. Operations whose outcome is
//! unknown (the client gave up) have no return event and may linearize anywhere after
//! their call, with any output. Models may split a history into independent parts
//! (e.g. per key) that are checked separately.
//!
//! Owns the search only; what an operation means is the [`Model`]'s business.

use std::collections::HashSet;
use std::hash::Hash;

use crate::kv::{KvOp, KvOutput};

/// A sequential specification.
pub trait Model {
    /// Model state.
    type State: Clone + Eq + Hash;
    /// Operation input.
    type Input: Clone;
    /// Operation output.
    type Output: Clone;
    /// Initial state.
    fn init(&self) -> Self::State;
    /// Applies `input` to `state`; returns the next state if `output` is what the
    /// specification allows (`None` output: unknown, anything goes).
    fn step(&self, state: &Self::State, input: &Self::Input, output: Option<&Self::Output>) -> Option<Self::State>;
    /// Groups operations (by index) into independently checkable parts.
    fn partition(&self, ops: &[Operation<Self::Input, Self::Output>]) -> Vec<Vec<usize>> {
        vec![(0..ops.len()).collect()]
    }
}

/// One client operation of a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation<I, O> {
    /// Issuing client.
    pub client: u64,
    /// What was asked.
    pub input: I,
    /// Invocation time.
    pub call: u64,
    /// Return time and output; `None` when the outcome is unknown.
    pub ret: Option<(u64, O)>,
}

/// Verdict of [`check`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckResult {
    /// Some order of the operations respects real time and the model.
    Linearizable,
    /// No such order exists; the indexes of the part that failed.
    Illegal {
        /// Operations (indexes into the history) of the failing part.
        part: Vec<usize>,
    },
}

#[derive(Clone, Copy)]
struct Event {
    op: usize,
    is_call: bool,
    partner: usize,
}

/// Checks a history against a model.
pub fn check<M: Model>(model: &M, ops: &[Operation<M::Input, M::Output>]) -> CheckResult {
    for part in model.partition(ops) {
        if !check_part(model, ops, &part) {
            return CheckResult::Illegal { part };
        }
    }
    CheckResult::Linearizable
}

fn check_part<M: Model>(model: &M, ops: &[Operation<M::Input, M::Output>], part: &[usize]) -> bool {
    let n = part.len();
    if n == 0 {
        return true;
    }
    // Events sorted by time; calls before returns at equal times (so touching
    // operations are treated as concurrent), unknown returns last.
    let mut times: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
    for (local, &i) in part.iter().enumerate() {
        times.push((ops[i].call, false, local));
        let ret = ops[i].ret.as_ref().map_or(u64::MAX, |(t, _)| *t);
        times.push((ret, true, local));
    }
    times.sort_unstable();
    let mut events: Vec<Event> = Vec::with_capacity(2 * n);
    let mut call_pos = vec![0usize; n];
    let mut ret_pos = vec![0usize; n];
    for (pos, &(_, is_ret, local)) in times.iter().enumerate() {
        events.push(Event { op: local, is_call: !is_ret, partner: 0 });
        if is_ret {
            ret_pos[local] = pos;
        } else {
            call_pos[local] = pos;
        }
    }
    for e in events.iter_mut() {
        e.partner = if e.is_call { ret_pos[e.op] } else { call_pos[e.op] };
    }
    // Doubly linked list over event positions with sentinels head = m, tail = m + 1.
    let m = events.len();
    let (head, tail) = (m, m + 1);
    let mut next = vec![tail; m + 2];
    let mut prev = vec![head; m + 2];
    next[head] = 0;
    for i in 0..m {
        next[i] = if i + 1 < m { i + 1 } else { tail };
        prev[i] = if i == 0 { head } else { i - 1 };
    }
    prev[tail] = m - 1;

    let lift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, e: usize, partner: usize| {
        next[prev[e]] = next[e];
        prev[next[e]] = prev[e];
        next[prev[partner]] = next[partner];
        prev[next[partner]] = prev[partner];
    };
    let unlift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, e: usize, partner: usize| {
        next[prev[partner]] = partner;
        prev[next[partner]] = partner;
        next[prev[e]] = e;
        prev[next[e]] = e;
    };

    let words = n.div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, M::State)> = HashSet::new();
    let mut stack: Vec<(usize, M::State)> = Vec::new();
    let mut state = model.init();
    let mut cur = next[head];
    while next[head] != tail {
        if cur == tail {
            // Only reachable if every remaining event is a call that failed; backtrack.
            let Some((e, old)) = stack.pop() else {
                return false;
            };
            let op = events[e].op;
            linearized[op / 64] &= !(1 << (op % 64));
            state = old;
            unlift(&mut next, &mut prev, e, events[e].partner);
            cur = next[e];
            continue;
        }
        let ev = events[cur];
        if ev.is_call {
            let op = &ops[part[ev.op]];
            let out = op.ret.as_ref().map(|(_, o)| o);
            if let Some(new_state) = model.step(&state, &op.input, out) {
                let mut lin = linearized.clone();
                lin[ev.op / 64] |= 1 << (ev.op % 64);
                if cache.insert((lin.clone(), new_state.clone())) {
                    stack.push((cur, std::mem::replace(&mut state, new_state)));
                    linearized = lin;
                    lift(&mut next, &mut prev, cur, ev.partner);
                    cur = next[head];
                    continue;
                }
            }
            cur = next[cur];
        } else {
            let Some((e, old)) = stack.pop() else {
                return false;
            };
            let op = events[e].op;
            linearized[op / 64] &= !(1 << (op % 64));
            state = old;
            unlift(&mut next, &mut prev, e, events[e].partner);
            cur = next[e];
        }
    }
    true
}

/// The [`crate::kv::KvStore`] specification, partitioned by key.
#[derive(Clone, Copy, Debug, Default)]
pub struct KvModel;

impl Model for KvModel {
    type State = Option<u64>;
    type Input = KvOp;
    type Output = KvOutput;

    fn init(&self) -> Option<u64> {
        None
    }

    fn step(&self, state: &Option<u64>, input: &KvOp, output: Option<&KvOutput>) -> Option<Option<u64>> {
        match (*input, output) {
            (KvOp::Get { .. }, None) => Some(*state),
            (KvOp::Get { .. }, Some(KvOutput::Value(v))) => (v == state).then_some(*state),
            (KvOp::Put { value, .. }, None | Some(KvOutput::Written)) => Some(Some(value)),
            (KvOp::Cas { expected, new, .. }, None) => Some(if *state == expected { Some(new) } else { *state }),
            (KvOp::Cas { expected, new, .. }, Some(KvOutput::Swapped(ok))) => match (*state == expected, *ok) {
                (true, true) => Some(Some(new)),
                (false, false) => Some(*state),
                _ => None,
            },
            _ => None,
        }
    }

    fn partition(&self, ops: &[Operation<KvOp, KvOutput>]) -> Vec<Vec<usize>> {
        let mut by_key: std::collections::BTreeMap<u64, Vec<usize>> = Default::default();
        for (i, op) in ops.iter().enumerate() {
            by_key.entry(op.input.key()).or_default().push(i);
        }
        by_key.into_values().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Op = Operation<KvOp, KvOutput>;

    fn put(client: u64, call: u64, ret: u64, value: u64) -> Op {
        Operation { client, input: KvOp::Put { key: 0, value }, call, ret: Some((ret, KvOutput::Written)) }
    }

    fn get(client: u64, call: u64, ret: u64, v: Option<u64>) -> Op {
        Operation { client, input: KvOp::Get { key: 0 }, call, ret: Some((ret, KvOutput::Value(v))) }
    }

    fn cas(client: u64, call: u64, ret: Option<u64>, expected: Option<u64>, new: u64, ok: bool) -> Op {
        Operation {
            client,
            input: KvOp::Cas { key: 0, expected, new },
            call,
            ret: ret.map(|t| (t, KvOutput::Swapped(ok))),
        }
    }

    #[test]
    fn known_histories() {
        let cases: Vec<(&str, Vec<Op>, bool)> = vec![
            ("empty", vec![], true),
            ("sequential", vec![put(1, 0, 1, 1), get(2, 2, 3, Some(1))], true),
            ("stale read after write returned", vec![put(1, 0, 1, 1), get(2, 2, 3, None)], false),
            ("concurrent read may see either (old)", vec![put(1, 0, 5, 1), get(2, 1, 2, None)], true),
            ("concurrent read may see either (new)", vec![put(1, 0, 5, 1), get(2, 1, 2, Some(1))], true),
            (
                "new then old is not linearizable",
                vec![put(1, 0, 10, 1), get(2, 1, 2, Some(1)), get(3, 3, 4, None)],
                false,
            ),
            (
                "two writers, reader sees order",
                vec![put(1, 0, 10, 1), put(2, 0, 10, 2), get(3, 11, 12, Some(1)), get(3, 13, 14, Some(1))],
                true,
            ),
            (
                "flip-flop after both writes finished",
                vec![put(1, 0, 10, 1), put(2, 0, 10, 2), get(3, 11, 12, Some(1)), get(3, 13, 14, Some(2))],
                false,
            ),
            ("value never written", vec![get(1, 0, 1, Some(9))], false),
            (
                "unknown write may take effect late",
                vec![
                    Operation { client: 1, input: KvOp::Put { key: 0, value: 3 }, call: 0, ret: None },
                    get(2, 5, 6, None),
                    get(2, 7, 8, Some(3)),
                ],
                true,
            ),
            (
                "unknown write cannot un-happen",
                vec![
                    Operation { client: 1, input: KvOp::Put { key: 0, value: 3 }, call: 0, ret: None },
                    get(2, 5, 6, Some(3)),
                    get(2, 7, 8, None),
                ],
                false,
            ),
            (
                "two successful CAS from the same value",
                vec![cas(1, 0, Some(5), None, 1, true), cas(2, 0, Some(5), None, 2, true)],
                false,
            ),
            (
                "one CAS wins, one fails",
                vec![cas(1, 0, Some(5), None, 1, true), cas(2, 0, Some(5), None, 2, false), get(3, 6, 7, Some(1))],
                true,
            ),
            ("failed CAS whose expectation held", vec![put(1, 0, 1, 4), cas(2, 2, Some(3), Some(4), 5, false)], false),
        ];
        for (name, ops, want) in cases {
            let got = check(&KvModel, &ops) == CheckResult::Linearizable;
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn keys_are_checked_independently() {
        let mut a = put(1, 0, 1, 1);
        a.input = KvOp::Put { key: 7, value: 1 };
        let b = get(2, 2, 3, None);
        assert_eq!(check(&KvModel, &[a, b]), CheckResult::Linearizable);
    }

    #[test]
    fn large_concurrent_history_is_fast() {
        // 8 clients, 400 operations, heavy overlap: memoization keeps this quick.
        let mut ops = Vec::new();
        let mut value = None;
        let mut t = 0;
        for i in 0..400u64 {
            let c = i % 8;
            t += 1;
            if i % 3 == 0 {
                ops.push(put(c, t, t + 6, i));
                value = Some(i);
            } else {
                ops.push(get(c, t, t + 6, value));
            }
        }
        assert_eq!(check(&KvModel, &ops), CheckResult::Linearizable);
    }
}
