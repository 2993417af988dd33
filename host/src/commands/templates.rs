//! `hfwasm templates generate`: starter IBM-format AWS templates from what the account has
//! (its VPC, subnets, security group and a current image), for a site that has none yet.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::{DirArgs, dirs, print_failure};
use hfwasm::capabilities::ec2::discover::{self, Network, Wanted};
use hfwasm::capabilities::ec2::{Ec2Client, Ec2Settings};

/// Template commands.
#[derive(Subcommand)]
pub enum TemplatesCommand {
    /// Write starter AWS templates (IBM's awsprov_templates.json format) from the account:
    /// one template per instance type and availability zone of the VPC (the default VPC
    /// unless --vpc-id), with its `default` security group and the newest Amazon Linux 2023
    /// image (unless told otherwise). The account is the one of the conf dir's IBM config
    /// file when there is one, else --region / AWS_REGION with the standard AWS credentials.
    ///
    /// Example: hfwasm templates generate --region us-east-1 --vm-type m5.large --out awsprov_templates.json
    Generate(GenerateArgs),
}

/// Which account and what to put in the templates.
#[derive(Args, Clone, Default)]
pub struct Discovery {
    /// AWS region (else the IBM config file's AWS_REGION, else AWS_REGION).
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,
    /// EC2 endpoint (a VPC endpoint; else AWS_ENDPOINT_URL).
    #[arg(long, value_name = "URL")]
    pub endpoint_url: Option<String>,
    /// VPC to use (default: the account's default VPC).
    #[arg(long, value_name = "ID")]
    pub vpc_id: Option<String>,
    /// Security groups for the hosts (default: the VPC's `default` group); repeatable.
    #[arg(long = "security-group-id", value_name = "ID")]
    pub security_groups: Vec<String>,
    /// Image for the hosts (default: the newest Amazon Linux 2023 for x86_64).
    #[arg(long, value_name = "AMI")]
    pub image_id: Option<String>,
    /// Image name pattern to pick the newest of (`*` wildcards).
    #[arg(long, value_name = "PATTERN", conflicts_with = "image_id")]
    pub image_name: Option<String>,
    /// Owner of the images --image-name searches (default: amazon).
    #[arg(long, value_name = "OWNER")]
    pub image_owner: Option<String>,
    /// Instance types, one template per type and zone; repeatable (default: t3.medium).
    #[arg(long = "vm-type", value_name = "TYPE")]
    pub vm_types: Vec<String>,
    /// maxNumber of each template.
    #[arg(long, default_value_t = 10)]
    pub max_number: u32,
}

/// `templates generate` arguments.
#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub discovery: Discovery,
    /// Write here (default: stdout).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Overwrite --out if it exists.
    #[arg(long)]
    pub force: bool,
}

/// Runs a templates command.
pub fn run(d: &DirArgs, c: &TemplatesCommand) -> ExitCode {
    hfwasm::logging::init("warn", None, "templates");
    match c {
        TemplatesCommand::Generate(a) => generate_cmd(d, a),
    }
}

fn generate_cmd(d: &DirArgs, a: &GenerateArgs) -> ExitCode {
    if let Some(out) = &a.out
        && out.exists()
        && !a.force
    {
        return print_failure(format!("{} exists; give --force to replace it", out.display()));
    }
    // The conf dir's IBM config, when the command runs for an instance that has one.
    let ibm = dirs(d)
        .ok()
        .and_then(|dirs| hfwasm::config::ibm_aws::find(&dirs.conf_dir, &dirs.name).map(|(c, _)| dirs.conf_dir.join(c)));
    let settings = match settings(&a.discovery, ibm.as_deref()) {
        Ok(s) => s,
        Err(e) => return print_failure(e),
    };
    let (templates, net) = match generate(&a.discovery, settings) {
        Ok(v) => v,
        Err(e) => return print_failure(e),
    };
    let text = hfwasm::hf::registration::render(&templates, None);
    let count = templates["templates"].as_array().map_or(0, Vec::len);
    match &a.out {
        Some(out) => {
            if let Err(e) = std::fs::write(out, &text) {
                return print_failure(format!("cannot write {}: {e}", out.display()));
            }
            eprintln!("{}; wrote {count} template(s) to {}", summary(&net), out.display());
        }
        None => {
            print!("{text}");
            eprintln!("{}; {count} template(s)", summary(&net));
        }
    }
    ExitCode::SUCCESS
}

/// One line on what was found.
pub fn summary(net: &Network) -> String {
    format!(
        "VPC {}, {} subnet(s), security group(s) {}, image {} ({})",
        net.vpc_id,
        net.subnets.len(),
        net.security_groups.join(","),
        net.image.0,
        net.image.1
    )
}

/// The EC2 settings: IBM's config file `ibm` (its region and endpoint unless the flags say
/// otherwise), else the flags and the standard AWS environment.
pub fn settings(a: &Discovery, ibm: Option<&std::path::Path>) -> Result<Ec2Settings, String> {
    let mut s = match ibm {
        Some(file) => hfwasm::config::ibm_aws::settings_of(file, |k| std::env::var(k).ok()).map_err(|e| e.to_string())?,
        None => Ec2Settings::default(),
    };
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    match (&a.region, ibm) {
        (Some(r), _) => s.region = r.clone(),
        (None, Some(_)) => {}
        (None, None) => {
            s.region = env("AWS_REGION")
                .or_else(|| env("AWS_DEFAULT_REGION"))
                .ok_or("no region: give --region (or set AWS_REGION)")?
        }
    }
    if let Some(u) = a
        .endpoint_url
        .clone()
        .or_else(|| if ibm.is_none() { env("AWS_ENDPOINT_URL") } else { None })
    {
        s.endpoint_url = Some(u);
    }
    Ok(s)
}

/// Discovers the account's network and image and builds the templates.
pub fn generate(a: &Discovery, settings: Ec2Settings) -> Result<(serde_json::Value, Network), String> {
    let client = Ec2Client::new(settings);
    let want = Wanted {
        vpc_id: a.vpc_id.clone(),
        security_groups: a.security_groups.clone(),
        image_id: a.image_id.clone(),
        image_name: a.image_name.clone(),
        image_owner: a.image_owner.clone(),
    };
    let net = client.discover(&want)?;
    let types = if a.vm_types.is_empty() {
        vec!["t3.medium".to_string()]
    } else {
        a.vm_types.clone()
    };
    if a.max_number == 0 {
        return Err("--max-number must be at least 1".into());
    }
    Ok((discover::starter_templates(&net, &types, a.max_number), net))
}
