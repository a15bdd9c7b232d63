//! Resource attributes of a traced process: `service.name` by the order in REFERENCE.md (the
//! process's own OTEL_SERVICE_NAME, then service.name in its OTEL_RESOURCE_ATTRIBUTES, then
//! Kubernetes metadata when present, then the executable), process and host attributes.
//!
//! Privacy: `process.command_line` / `process.command_args` are opt-in (as in the semantic
//! conventions) and, when exported, have secret-looking arguments redacted; environment values
//! are never exported (only OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES, which exist to be).
use opentelemetry_proto::tonic::{
    common::v1::{AnyValue, ArrayValue, KeyValue, any_value::Value},
    resource::v1::Resource,
};

/// A resource attribute (resources are OTLP structs: built once per process, then cached).
fn str_attr(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

fn int_attr(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(Value::IntValue(value)),
        }),
        ..Default::default()
    }
}

#[derive(Clone, Debug, Default)]
pub struct ProcessInfo {
    pub pid: u32,
    pub executable: String,
    /// The process's arguments (`/proc/<pid>/cmdline`), as read: never exported as such.
    pub command_args: Vec<String>,
    pub service_name: String,
    /// Other attributes from the process's OTEL_RESOURCE_ATTRIBUTES.
    pub extra: Vec<(String, String)>,
    pub container_id: Option<String>,
    /// Ports of the OTLP endpoints its environment configures (an SDK exporting somewhere).
    pub otlp_endpoint_ports: Vec<u16>,
    /// Its environment selects the OTLP traces exporter without naming an endpoint (the
    /// SDK default: localhost:4317/4318).
    pub otlp_default_endpoint: bool,
}

/// The port of an OTLP endpoint URL (`http://host:4317`, `https://host/...` -> 443).
fn url_port(url: &str) -> Option<u16> {
    let (scheme, rest) = url.trim().split_once("://")?;
    let authority = rest.split('/').next()?;
    let authority = authority.rsplit('@').next()?;
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || host.contains('[') => port.parse().ok(),
        _ => match scheme {
            "https" => Some(443),
            "http" => Some(80),
            _ => None,
        },
    }
}

/// Parses `k=v,k2=v2` (values percent-decoded) as in OTEL_RESOURCE_ATTRIBUTES.
pub fn parse_resource_attributes(s: &str) -> Vec<(String, String)> {
    s.split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), percent_decode(v.trim())))
        .filter(|(k, _)| !k.is_empty())
        .collect()
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// Container id from /proc/<pid>/cgroup contents (containerd, CRI-O, docker, cgroup v1 kubepods).
pub fn container_id_from_cgroup(cgroup: &str) -> Option<String> {
    for line in cgroup.lines() {
        let path = line.rsplit(':').next().unwrap_or("");
        for seg in path.rsplit('/') {
            let seg = seg.strip_suffix(".scope").unwrap_or(seg);
            let id = seg
                .strip_prefix("cri-containerd-")
                .or_else(|| seg.strip_prefix("crio-"))
                .or_else(|| seg.strip_prefix("docker-"))
                .or_else(|| seg.strip_prefix("libpod-"))
                .unwrap_or(seg);
            if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Some(id.to_owned());
            }
        }
    }
    None
}

/// What /proc says about a process, raw: the reader lives in the daemon (`discover`).
#[derive(Clone, Debug, Default)]
pub struct ProcessFacts {
    pub pid: u32,
    /// File name of /proc/<pid>/exe, if readable.
    pub exe: Option<String>,
    /// /proc/<pid>/comm, if readable.
    pub comm: Option<String>,
    /// /proc/<pid>/cmdline (NUL-separated).
    pub cmdline: Vec<u8>,
    /// /proc/<pid>/environ (NUL-separated `KEY=value`).
    pub environ: Vec<u8>,
    /// /proc/<pid>/cgroup.
    pub cgroup: Option<String>,
}

/// Builds a process's identity from what /proc says. Missing pieces are left empty (the
/// process may be gone).
pub fn process_info(facts: ProcessFacts) -> ProcessInfo {
    let ProcessFacts {
        pid,
        exe,
        comm,
        cmdline,
        environ,
        cgroup,
    } = facts;
    let mut info = ProcessInfo {
        pid,
        ..Default::default()
    };
    info.executable = exe
        .or_else(|| comm.map(|s| s.trim().to_owned()))
        .unwrap_or_default();
    info.command_args = cmdline
        .split(|&c| c == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect::<Vec<_>>();
    let mut env_service = None;
    let mut traces_exporter_otlp = false;
    let mut env_attrs = Vec::new();
    for var in environ.split(|&c| c == 0) {
        if let Some(v) = var.strip_prefix(b"OTEL_SERVICE_NAME=") {
            let v = String::from_utf8_lossy(v).trim().to_owned();
            if !v.is_empty() {
                env_service = Some(v);
            }
        } else if let Some(v) = var.strip_prefix(b"OTEL_RESOURCE_ATTRIBUTES=") {
            env_attrs = parse_resource_attributes(&String::from_utf8_lossy(v));
        } else if let Some(v) = var
            .strip_prefix(b"OTEL_EXPORTER_OTLP_ENDPOINT=")
            .or_else(|| var.strip_prefix(b"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT="))
        {
            info.otlp_endpoint_ports
                .extend(url_port(&String::from_utf8_lossy(v)));
        } else if let Some(v) = var.strip_prefix(b"OTEL_TRACES_EXPORTER=") {
            traces_exporter_otlp = String::from_utf8_lossy(v).contains("otlp");
        }
    }
    let attr_service = env_attrs
        .iter()
        .find(|(k, _)| k == "service.name")
        .map(|(_, v)| v.clone());
    info.service_name = env_service
        .or(attr_service)
        .unwrap_or_else(|| info.executable.clone());
    info.extra = env_attrs
        .into_iter()
        .filter(|(k, _)| k != "service.name")
        .collect();
    info.otlp_default_endpoint = traces_exporter_otlp && info.otlp_endpoint_ports.is_empty();
    info.container_id = cgroup.and_then(|c| container_id_from_cgroup(&c));
    info
}

/// `command_line`: also export the command line and arguments (opt-in), secrets redacted.
pub fn to_resource(info: &ProcessInfo, host: &str, command_line: bool) -> Resource {
    let mut attributes: Vec<KeyValue> = vec![
        str_attr("service.name", info.service_name.clone()),
        str_attr("host.name", host),
        int_attr("process.pid", i64::from(info.pid)),
        str_attr("process.executable.name", info.executable.clone()),
        str_attr("telemetry.distro.name", "sonde"),
    ];
    if command_line && !info.command_args.is_empty() {
        let args = super::redact::argv(&info.command_args);
        attributes.push(str_attr("process.command_line", args.join(" ")));
        attributes.push(KeyValue {
            key: "process.command_args".to_owned(),
            value: Some(AnyValue {
                value: Some(Value::ArrayValue(ArrayValue {
                    values: args
                        .into_iter()
                        .map(|a| AnyValue {
                            value: Some(Value::StringValue(a)),
                        })
                        .collect(),
                })),
            }),
            ..Default::default()
        });
    }
    if let Some(id) = &info.container_id {
        attributes.push(str_attr("container.id", id.clone()));
    }
    for (k, v) in &info.extra {
        if !attributes.iter().any(|a| &a.key == k) {
            attributes.push(str_attr(k, v.clone()));
        }
    }
    Resource {
        attributes,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_attributes_parse_and_decode() {
        assert_eq!(
            parse_resource_attributes("service.name=my%20api, deployment.environment=prod,bad,=x"),
            vec![
                ("service.name".into(), "my api".into()),
                ("deployment.environment".into(), "prod".into())
            ]
        );
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
        // A trailing escape is decoded too (the hand-written decoder stopped one byte early).
        assert_eq!(percent_decode("a%41"), "aA");
    }

    #[test]
    fn otlp_endpoint_ports() {
        assert_eq!(url_port("http://localhost:4317"), Some(4317));
        assert_eq!(url_port("http://10.0.0.1:4318/v1/traces"), Some(4318));
        assert_eq!(url_port("https://collector.example"), Some(443));
        assert_eq!(url_port("http://[::1]:4317"), Some(4317));
        assert_eq!(url_port("nonsense"), None);
    }

    #[test]
    fn container_ids_from_cgroup_paths() {
        let id = "a".repeat(64);
        for cg in [
            format!(
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-pod1.slice/cri-containerd-{id}.scope"
            ),
            format!("0::/system.slice/crio-{id}.scope"),
            format!("0::/system.slice/docker-{id}.scope"),
            format!("12:memory:/kubepods/burstable/pod1234/{id}"),
        ] {
            assert_eq!(container_id_from_cgroup(&cg), Some(id.clone()), "{cg}");
        }
        assert_eq!(
            container_id_from_cgroup("0::/user.slice/session-1.scope"),
            None
        );
    }

    #[test]
    fn command_line_is_opt_in_and_redacted() {
        let info = ProcessInfo {
            pid: 7,
            executable: "app".into(),
            command_args: vec!["app".into(), "--db-password=hunter2".into()],
            service_name: "app".into(),
            ..Default::default()
        };
        let keys = |r: &Resource| {
            r.attributes
                .iter()
                .map(|a| a.key.clone())
                .collect::<Vec<_>>()
        };
        let r = to_resource(&info, "h", false);
        assert!(!keys(&r).iter().any(|k| k.starts_with("process.command")));
        let r = to_resource(&info, "h", true);
        assert!(keys(&r).contains(&"process.command_args".to_owned()));
        let text = format!("{r:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("--db-password=REDACTED"), "{text}");
    }

    #[test]
    fn service_name_order_env_then_attributes_then_executable() {
        let facts = |environ: &[u8]| ProcessFacts {
            pid: 7,
            exe: Some("python3.11".into()),
            comm: Some("gunicorn\n".into()),
            cmdline: b"python3 app.py\0--port\08000\0".to_vec(),
            environ: environ.to_vec(),
            cgroup: None,
        };
        let info = process_info(facts(
            b"A=1\0OTEL_RESOURCE_ATTRIBUTES=service.name=attr,x=y\0",
        ));
        assert_eq!(info.service_name, "attr");
        assert_eq!(info.extra, vec![("x".to_owned(), "y".to_owned())]);
        assert_eq!(info.command_args, ["python3 app.py", "--port", "8000"]);
        let info = process_info(facts(
            b"OTEL_RESOURCE_ATTRIBUTES=service.name=attr\0OTEL_SERVICE_NAME=env\0",
        ));
        assert_eq!(info.service_name, "env");
        let info = process_info(facts(b"OTEL_TRACES_EXPORTER=otlp\0"));
        assert_eq!(info.service_name, "python3.11");
        assert!(info.otlp_default_endpoint);
        let info = process_info(ProcessFacts {
            exe: None,
            ..facts(b"OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318\0")
        });
        assert_eq!(info.executable, "gunicorn");
        assert_eq!(info.otlp_endpoint_ports, vec![4318]);
        assert!(!info.otlp_default_endpoint);
    }
}
