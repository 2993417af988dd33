//! Following the Auto Scaling group of a request (`providerApi: ASG`): its instances are
//! reported as they come InService, the group stops replacing instances once it has what
//! was asked for (or gives up after `spotFleetRequestExpiry`), returned instances leave it
//! with its desired capacity lowered, and it is deleted once empty.

use std::collections::{BTreeMap, BTreeSet};

use hfwasm_guest_sdk::autoscaling::{self, Group};
use hfwasm_guest_sdk::ec2;
use hfwasm_guest_sdk::*;

use crate::launch::{group_delete_key, group_key};
use crate::{TAG_REQUEST, ec2_err};

/// The tag Auto Scaling puts on the instances of a group (value: the group's name).
const TAG_GROUP: &str = "aws:autoscaling:groupName";

/// The epoch second the group of `request_id` stops filling, while it fills.
pub fn filling_until(request_id: &str) -> Result<Option<u64>, ProviderError> {
    Ok(kv::get(&group_key(request_id))?.and_then(|v| v.parse().ok()))
}

/// The group of `request_id`, when there is one.
pub fn describe(request_id: &str) -> Result<Option<Group>, ProviderError> {
    autoscaling::describe_group(request_id).map_err(|e| ec2_err("DescribeAutoScalingGroups", e))
}

/// Instances of `group` not yet InService: reported pending whatever EC2 says.
pub fn not_in_service(group: Option<&Group>) -> BTreeSet<String> {
    group
        .into_iter()
        .flat_map(|g| g.instances.iter())
        .filter(|i| i.lifecycle_state != "InService")
        .map(|i| i.instance_id.clone())
        .collect()
}

/// Machines of `not_in_service` instances as pending: HostFactory gets them once ready.
pub fn hold_back(machines: &mut [Machine], not_in_service: &BTreeSet<String>) {
    for m in machines.iter_mut() {
        if m.state == MachineState::Running && not_in_service.contains(&m.machine_id) {
            m.state = MachineState::Pending;
        }
    }
}

/// Units still to come from the group of `req` and a note for HostFactory. A group that
/// has them all InService stops launching and replacing (so nothing changes behind
/// HostFactory's back); one past `until` is lowered to what it holds and stops likewise,
/// or is deleted when it holds nothing. Either way it is no longer followed.
pub fn follow(
    req: &ProvisionRequest,
    group: Option<&Group>,
    until: u64,
    got: u32,
    now: u64,
) -> Result<(u32, Option<String>), ProviderError> {
    let rid = &req.request_id;
    let pending = not_in_service(group).len();
    let Some(g) = group else {
        // The group is gone (deleted by hand): nothing more will come.
        kv::delete(&group_key(rid))?;
        return Ok((
            0,
            (got < req.count).then(|| format!("Auto Scaling group of {rid} is gone with {got} of {} units", req.count)),
        ));
    };
    if now < until && (got < req.count || pending > 0) {
        return Ok((
            req.count.saturating_sub(got),
            Some(format!(
                "Auto Scaling group {}: {got} of {} units, {pending} not in service yet",
                g.name, req.count
            )),
        ));
    }
    let mut message = None;
    if got < req.count {
        message = Some(format!(
            "Auto Scaling group {} stopped filling with {got} of {} units",
            g.name, req.count
        ));
        if got == 0 {
            autoscaling::delete_group(rid).map_err(|e| ec2_err("DeleteAutoScalingGroup", e))?;
            kv::delete(&group_key(rid))?;
            return Ok((0, message));
        }
        autoscaling::lower_desired_capacity(rid, got.min(g.desired_capacity)).map_err(|e| ec2_err("SetDesiredCapacity", e))?;
    }
    autoscaling::suspend_replacement(rid).map_err(|e| ec2_err("SuspendProcesses", e))?;
    kv::delete(&group_key(rid))?;
    Ok((0, message))
}

/// The request ids of the groups `instances` are in (by their Auto Scaling tag), with
/// their ids.
fn by_group(instances: &[&ec2::Instance]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for i in instances {
        let tag = |k: &str| i.tags.iter().find(|t| t.key == k).map(|t| t.value.clone());
        if let (Some(_), Some(rid)) = (tag(TAG_GROUP), tag(TAG_REQUEST)) {
            out.entry(rid).or_default().push(i.instance_id.clone());
        }
    }
    out
}

/// Takes `instances` out of their groups before they are terminated, each group's desired
/// capacity lowered by as many so nothing replaces them; returns the requests whose groups
/// they left. A failure is logged: the instances are terminated anyway, and a replacement
/// the group launches is an orphan the host's sweep returns.
pub fn detach(instances: &[&ec2::Instance]) -> Vec<String> {
    let groups = by_group(instances);
    for (rid, ids) in &groups {
        if let Err(e) = autoscaling::detach_instances(rid, ids) {
            warn(&format!(
                "cannot detach {} from the Auto Scaling group of {rid}: {}",
                ids.join(", "),
                ec2_err("DetachInstances", e)
            ));
        }
    }
    groups.into_keys().collect()
}

/// Deletes the group of `request_id` if it holds no instance and wants none any more
/// (while one is still detaching, a later return-status call tries again). A group still
/// filling keeps a desired capacity above zero, so it is not taken; one whose request a
/// killed call abandoned is, once the sweep has returned its instances.
pub fn delete_if_empty(request_id: &str) -> Result<(), ProviderError> {
    let Some(g) = describe(request_id)? else {
        kv::delete(&group_delete_key(request_id))?;
        return Ok(());
    };
    if !g.instances.is_empty() || g.desired_capacity > 0 {
        kv::set(&group_delete_key(request_id), "1")?;
        return Ok(());
    }
    match autoscaling::delete_group(request_id) {
        Ok(()) => {
            kv::delete(&group_delete_key(request_id))?;
            kv::delete(&group_key(request_id))?;
        }
        Err(e) => {
            warn(&format!(
                "cannot delete the Auto Scaling group of {request_id} yet: {}",
                ec2_err("DeleteAutoScalingGroup", e)
            ));
            kv::set(&group_delete_key(request_id), "1")?;
        }
    }
    Ok(())
}

/// Whether the group of `request_id` waits for deletion.
pub fn awaits_deletion(request_id: &str) -> Result<bool, ProviderError> {
    Ok(kv::get(&group_delete_key(request_id))?.is_some())
}

/// Of `instances` (HostFactory's hosts in groups), the ids Auto Scaling is about to
/// replace: unhealthy, or already terminating.
pub fn being_replaced(instances: &[&ec2::Instance]) -> Result<BTreeSet<String>, ProviderError> {
    let ids: Vec<String> = instances
        .iter()
        .filter(|i| i.tags.iter().any(|t| t.key == TAG_GROUP))
        .map(|i| i.instance_id.clone())
        .collect();
    if ids.is_empty() {
        return Ok(BTreeSet::new());
    }
    let described = autoscaling::describe_group_instances(&ids).map_err(|e| ec2_err("DescribeAutoScalingInstances", e))?;
    Ok(described
        .into_iter()
        .filter(|(_, i)| !i.healthy || i.lifecycle_state.starts_with("Terminating"))
        .map(|(_, i)| i.instance_id)
        .collect())
}
