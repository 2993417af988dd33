//! The request lifecycle rules of the contract (DESIGN.md §5), owned by the host so no
//! provider can break them: a guest reports machines in provider terms and these pure
//! functions derive what HostFactory sees.

use super::model::{Machine, MachineState};

/// HostFactory's request status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestStatus {
    /// In progress; HostFactory polls again.
    Running,
    /// Done, every machine as asked.
    Complete,
    /// Done, but some machines failed or fewer than asked exist.
    CompleteWithError,
}

impl RequestStatus {
    /// Whether HostFactory stops tracking the request.
    pub fn is_final(self) -> bool {
        self != RequestStatus::Running
    }

    /// Store spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestStatus::Running => "running",
            RequestStatus::Complete => "complete",
            RequestStatus::CompleteWithError => "complete_with_error",
        }
    }

    /// Parses [`RequestStatus::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "running" => RequestStatus::Running,
            "complete" => RequestStatus::Complete,
            "complete_with_error" => RequestStatus::CompleteWithError,
            _ => return None,
        })
    }
}

/// HostFactory's per-machine result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MachineResult {
    /// Not there yet (provision) / not gone yet (return).
    Executing,
    /// Usable (provision) / gone (return).
    Succeed,
    /// Will never be usable (provision) / could not be released (return).
    Fail,
}

/// A machine's result in a provision request.
pub fn provision_result(state: MachineState) -> MachineResult {
    match state {
        MachineState::Pending => MachineResult::Executing,
        MachineState::Running => MachineResult::Succeed,
        MachineState::Stopping | MachineState::Stopped | MachineState::Terminated | MachineState::Failed => MachineResult::Fail,
    }
}

/// A machine's result in a return request.
pub fn return_result(state: MachineState) -> MachineResult {
    match state {
        MachineState::Terminated => MachineResult::Succeed,
        MachineState::Failed => MachineResult::Fail,
        MachineState::Pending | MachineState::Running | MachineState::Stopping | MachineState::Stopped => MachineResult::Executing,
    }
}

/// The message HostFactory gets for a machine: the provider's, or for a failure without
/// one, a message saying so (the contract requires a message on `fail`).
pub fn machine_message(m: &Machine, result: MachineResult) -> String {
    match (&m.message, result) {
        (Some(msg), _) if !msg.is_empty() => msg.clone(),
        (_, MachineResult::Fail) => format!("machine {} is {}", m.name, m.state.as_str()),
        _ => String::new(),
    }
}

/// Status of a provision request for `requested` units, given its machines, what the
/// provider still seeks, and the units its live machines count for (None = one per
/// machine). Never final while any machine is executing or units are outstanding; final
/// with error when a machine failed or fewer units than asked exist.
pub fn provision_status(requested: u32, machines: &[Machine], outstanding: u32, units: Option<u32>) -> RequestStatus {
    let results: Vec<MachineResult> = machines.iter().map(|m| provision_result(m.state)).collect();
    if outstanding > 0 || results.contains(&MachineResult::Executing) {
        return RequestStatus::Running;
    }
    let good = results.iter().filter(|r| **r == MachineResult::Succeed).count();
    let delivered = units.map_or(good, |u| u as usize);
    if results.contains(&MachineResult::Fail) || delivered < requested as usize {
        RequestStatus::CompleteWithError
    } else {
        RequestStatus::Complete
    }
}

/// Status of a return request: running while any host is not gone yet.
pub fn return_status(machines: &[Machine]) -> RequestStatus {
    let results: Vec<MachineResult> = machines.iter().map(|m| return_result(m.state)).collect();
    if results.contains(&MachineResult::Executing) {
        RequestStatus::Running
    } else if results.contains(&MachineResult::Fail) {
        RequestStatus::CompleteWithError
    } else {
        RequestStatus::Complete
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(state: MachineState) -> Machine {
        Machine {
            machine_id: "i".into(),
            name: "h".into(),
            private_ip: String::new(),
            public_ip: None,
            launch_time: 0,
            state,
            message: None,
        }
    }

    #[test]
    fn never_final_while_executing() {
        use MachineState::*;
        assert_eq!(provision_status(2, &[m(Running), m(Pending)], 0, None), RequestStatus::Running);
        assert_eq!(provision_status(2, &[m(Failed), m(Pending)], 0, None), RequestStatus::Running);
        assert_eq!(provision_status(2, &[m(Running)], 1, None), RequestStatus::Running);
        assert_eq!(return_status(&[m(Terminated), m(Stopping)]), RequestStatus::Running);
    }

    #[test]
    fn final_states() {
        use MachineState::*;
        assert_eq!(provision_status(2, &[m(Running), m(Running)], 0, None), RequestStatus::Complete);
        assert_eq!(
            provision_status(3, &[m(Running), m(Running)], 0, None),
            RequestStatus::CompleteWithError
        );
        assert_eq!(
            provision_status(2, &[m(Running), m(Failed)], 0, None),
            RequestStatus::CompleteWithError
        );
        assert_eq!(provision_status(1, &[], 0, None), RequestStatus::CompleteWithError);
        assert_eq!(return_status(&[m(Terminated)]), RequestStatus::Complete);
        assert_eq!(return_status(&[m(Terminated), m(Failed)]), RequestStatus::CompleteWithError);
        assert_eq!(return_status(&[]), RequestStatus::Complete);
    }

    #[test]
    fn failures_always_carry_a_message() {
        let failed = m(MachineState::Terminated);
        assert!(!machine_message(&failed, provision_result(failed.state)).is_empty());
        assert!(machine_message(&m(MachineState::Running), MachineResult::Succeed).is_empty());
    }
}
