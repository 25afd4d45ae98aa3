//! Raft consensus as a sans-IO state machine.
