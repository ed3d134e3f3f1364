//! A real nginx (Debian's `nginx-light`) as the load balancer of the cluster tests, running
//! `deploy/nginx-qrlink.conf` (the snippet the README shows) with the test's ports, in a
//! directory of its own; stopped (killed) when dropped.
//!
//! Without nginx a test says why and passes, unless `CI` is set (`.ci/run` installs it).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::WAIT;

pub struct TestNginx {
    child: Child,
    pub port: u16,
    dir: PathBuf,
}

/// The snippet, as committed.
pub const SNIPPET: &str = include_str!("../../../deploy/nginx-qrlink.conf");

impl TestNginx {
    /// nginx in front of `nodes` (ports on 127.0.0.1); `None` when nginx is missing (never on
    /// CI).
    pub async fn start(nodes: &[u16]) -> Option<TestNginx> {
        let nginx = super::required_tool("nginx", "nginx-light")?;
        let port = super::free_port();
        // The snippet with this test's ports: its three example nodes become ours.
        let servers: String = nodes
            .iter()
            .map(|p| format!("    server 127.0.0.1:{p};\n"))
            .collect();
        let upstream_start = SNIPPET
            .find("upstream qrlink {\n")
            .expect("the upstream block");
        let body_start = upstream_start + "upstream qrlink {\n".len();
        let body_end = body_start + SNIPPET[body_start..].find('}').expect("its end");
        let snippet = format!(
            "{}{servers}{}",
            &SNIPPET[..body_start],
            &SNIPPET[body_end..]
        )
        .replace("listen 8080;", &format!("listen 127.0.0.1:{port};"));
        let dir = std::env::temp_dir().join(format!("qrlink-nginx-{port}"));
        std::fs::create_dir_all(&dir).unwrap();
        let d = dir.display();
        let conf = format!(
            "daemon off;\nmaster_process on;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\nevents {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n\
             proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n\
             uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n{snippet}\n}}\n"
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let child = Command::new(nginx)
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nginx starts");
        let nginx = TestNginx { child, port, dir };
        tokio::time::timeout(WAIT, async {
            while tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err()
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "nginx does not listen: {}",
                std::fs::read_to_string(nginx.dir.join("error.log")).unwrap_or_default()
            )
        });
        Some(nginx)
    }
}

impl Drop for TestNginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
