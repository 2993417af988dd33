//! What a provider's answer must be before the host stores or reports it: the guest is
//! untrusted code, so a wrong answer (500 machines for a request of 1, one machine id five
//! times, a name HostFactory cannot use) is refused as a contract breach naming what is
//! wrong, never counted or passed on.

use std::collections::HashSet;
use std::net::IpAddr;

use crate::domain::model::{AttributeKind, Machine, MachineState, ProvisionProgress, Template};

/// A host name HostFactory and a cluster can use: 1-253 characters of letters, digits,
/// `.`, `-`, `_`.
fn host_name_ok(name: &str) -> bool {
    !name.is_empty() && name.len() <= 253 && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

/// Each machine once, with a usable id, name and addresses. A machine still being made may
/// have no name or address yet (EC2 assigns them while it starts).
pub fn machines(list: &[Machine]) -> Result<(), String> {
    let mut ids = HashSet::with_capacity(list.len());
    for m in list {
        if m.machine_id.is_empty() || m.machine_id.len() > 512 || m.machine_id.chars().any(char::is_control) {
            return Err(format!(
                "machine id {:?} is empty, longer than 512 characters or holds control characters",
                cut(&m.machine_id)
            ));
        }
        if !ids.insert(m.machine_id.as_str()) {
            return Err(format!("machine id '{}' is reported more than once", m.machine_id));
        }
        let starting = matches!(m.state, MachineState::Pending | MachineState::Failed | MachineState::Terminated);
        if !(host_name_ok(&m.name) || m.name.is_empty() && starting) {
            return Err(format!(
                "machine '{}' has the name {:?}, which is not a host name",
                m.machine_id,
                cut(&m.name)
            ));
        }
        if !m.private_ip.is_empty() && m.private_ip.parse::<IpAddr>().is_err() {
            return Err(format!(
                "machine '{}' has the private address {:?}",
                m.machine_id,
                cut(&m.private_ip)
            ));
        }
        if let Some(ip) = m.public_ip.as_deref().filter(|ip| !ip.is_empty())
            && ip.parse::<IpAddr>().is_err()
        {
            return Err(format!("machine '{}' has the public address {:?}", m.machine_id, cut(ip)));
        }
    }
    Ok(())
}

/// A release answer for the machines `asked` to be released: each machine one of those
/// (by name) and reported once, with a usable id. The names are HostFactory's own, so they
/// are not judged; a provider may leave machines out (they keep their last state).
pub fn released(asked: &[Machine], answer: &[Machine]) -> Result<(), String> {
    let names: HashSet<&str> = asked.iter().map(|m| m.name.as_str()).collect();
    let mut seen = HashSet::with_capacity(answer.len());
    for m in answer {
        if !names.contains(m.name.as_str()) {
            return Err(format!("released machine {:?}, which was not asked to be released", cut(&m.name)));
        }
        if !seen.insert(m.name.as_str()) {
            return Err(format!("machine '{}' is reported more than once", m.name));
        }
        if m.machine_id.len() > 512 || m.machine_id.chars().any(char::is_control) {
            return Err(format!(
                "machine '{}' has the id {:?}, longer than 512 characters or holding control characters",
                m.name,
                cut(&m.machine_id)
            ));
        }
    }
    Ok(())
}

/// A provision answer for a request of `count` hosts (units for weighted templates): its
/// machines well-formed ([`machines`]) and no more live ones than asked (every machine
/// counts for at least one unit), `units` no more than the live machines could carry is not
/// judged (weights are the provider's).
pub fn progress(count: u32, p: &ProvisionProgress) -> Result<(), String> {
    machines(&p.machines)?;
    let live = p
        .machines
        .iter()
        .filter(|m| !matches!(m.state, MachineState::Failed | MachineState::Terminated))
        .count();
    if live > count as usize {
        return Err(format!("{live} live machines for a request of {count}"));
    }
    if p.outstanding > count {
        return Err(format!("{} hosts still outstanding for a request of {count}", p.outstanding));
    }
    Ok(())
}

/// Templates: a usable id, each once, `type`/`ncpus`/`nram` present, numeric attributes
/// that are numbers, `maxNumber` -1 or more.
pub fn templates(list: &[Template]) -> Result<(), String> {
    let mut seen = HashSet::with_capacity(list.len());
    for t in list {
        if t.id.trim().is_empty() {
            return Err("a template has an empty id".into());
        }
        if !seen.insert(t.id.as_str()) {
            return Err(format!("template id '{}' appears twice", t.id));
        }
        for required in ["type", "ncpus", "nram"] {
            if t.attribute(required).is_none() {
                return Err(format!("template '{}' has no '{required}' attribute", t.id));
            }
        }
        for a in &t.attributes {
            if a.kind == AttributeKind::Numeric && !a.value.trim().parse::<f64>().is_ok_and(f64::is_finite) {
                return Err(format!(
                    "template '{}': numeric attribute '{}' is {:?}, not a number",
                    t.id,
                    a.name,
                    cut(&a.value)
                ));
            }
        }
        if t.max_number < -1 {
            return Err(format!("template '{}' has maxNumber {}", t.id, t.max_number));
        }
    }
    Ok(())
}

/// At most 80 characters of a guest's text, for messages.
fn cut(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: &str, name: &str, state: MachineState) -> Machine {
        Machine {
            machine_id: id.into(),
            name: name.into(),
            private_ip: "10.0.0.1".into(),
            public_ip: None,
            launch_time: 1,
            state,
            message: None,
        }
    }

    #[test]
    fn wrong_answers_are_named() {
        let ok = ProvisionProgress {
            machines: vec![
                m("i-1", "ip-10-0-0-1.ec2.internal", MachineState::Running),
                m("i-2", "", MachineState::Pending),
            ],
            outstanding: 0,
            message: None,
            units: None,
        };
        assert_eq!(progress(2, &ok), Ok(()));
        let many = ProvisionProgress {
            machines: (0..500)
                .map(|i| m(&format!("i-{i}"), &format!("h{i}"), MachineState::Running))
                .collect(),
            ..ok.clone()
        };
        assert!(progress(1, &many).is_err_and(|e| e.contains("500 live machines for a request of 1")));
        let dup = ProvisionProgress {
            machines: vec![m("i-1", "a", MachineState::Running); 5],
            ..ok.clone()
        };
        assert!(progress(5, &dup).is_err_and(|e| e.contains("more than once")));
        let forged = ProvisionProgress {
            machines: vec![m("i-1", "a\nINFO forged", MachineState::Running)],
            ..ok.clone()
        };
        assert!(progress(1, &forged).is_err_and(|e| e.contains("not a host name")));
        let mut bad_ip = m("i-1", "a", MachineState::Running);
        bad_ip.private_ip = "10.0.0.999".into();
        assert!(machines(&[bad_ip]).is_err());
        // Failed machines do not count against the request.
        let replaced = ProvisionProgress {
            machines: vec![m("i-1", "a", MachineState::Failed), m("i-2", "b", MachineState::Running)],
            ..ok
        };
        assert_eq!(progress(1, &replaced), Ok(()));
    }

    #[test]
    fn release_answers_name_only_what_was_asked_once() {
        let asked = [m("i-1", "a", MachineState::Stopping), m("i-2", "b", MachineState::Stopping)];
        assert_eq!(released(&asked, &[m("i-1", "a", MachineState::Terminated)]), Ok(()));
        assert!(released(&asked, &[m("i-9", "c", MachineState::Terminated)]).is_err_and(|e| e.contains("not asked")));
        let twice = [m("i-1", "a", MachineState::Terminated), m("i-1", "a", MachineState::Stopping)];
        assert!(released(&asked, &twice).is_err_and(|e| e.contains("more than once")));
        assert!(released(&asked, &[m("i-\u{0}", "a", MachineState::Terminated)]).is_err_and(|e| e.contains("control")));
    }
}
