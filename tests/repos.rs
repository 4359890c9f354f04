//! Parallel repository creation: real git repositories on a volume, claimed
//! through compare-and-swap so none is created twice, idempotent re-runs, and
//! refusal of bad names and paths.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use modal_agents::agents::{AgentError, RepoConfig, RepoCreatorConfig, RepoError};
use serde_json::json;

fn config(name: &str, files: &[(&str, &str)]) -> RepoConfig {
    RepoConfig {
        name: name.into(),
        files: files
            .iter()
            .map(|(p, c)| (p.to_string(), c.to_string()))
            .collect(),
        branch: None,
        message: None,
        description: None,
    }
}

fn creator_config() -> RepoCreatorConfig {
    RepoCreatorConfig {
        author_name: "Ada Agent".into(),
        author_email: "ada@example.invalid".into(),
        ..RepoCreatorConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repos_are_created_once_each_as_real_git_repositories() {
    let t = support::start(1).await;
    let agents = t.rt.agents();
    let mut creators = Vec::new();
    for i in 0..3 {
        creators.push(
            agents
                .spawn_repo_creator(&format!("repo-{i}"), creator_config())
                .await
                .unwrap(),
        );
    }
    let service = config(
        "service",
        &[
            ("README.md", "# service\n"),
            ("src/main.py", "print('hi')\n"),
        ],
    );
    let configs = vec![
        service.clone(),
        config(
            "library",
            &[
                ("lib/__init__.py", ""),
                ("pyproject.toml", "[project]\nname='library'\n"),
            ],
        ),
        service.clone(),
        config("docs", &[("index.md", "docs\n")]),
        service,
    ];
    let results: Vec<_> = agents
        .create_repos(configs, &creators)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let service_results: Vec<_> = results.iter().filter(|r| r.name == "service").collect();
    assert_eq!(
        service_results.iter().filter(|r| r.created).count(),
        1,
        "created exactly once"
    );
    assert!(service_results
        .windows(2)
        .all(|w| w[0].commit == w[1].commit));

    for r in &results {
        let repo = git2::Repository::open(&r.path).unwrap();
        let head = repo.head().unwrap();
        assert_eq!(head.shorthand().ok(), Some("main"));
        let commit = head.peel_to_commit().unwrap();
        assert_eq!(commit.id().to_string(), r.commit);
        assert_eq!(commit.author().name().ok(), Some("Ada Agent"));
        assert_eq!(commit.message().ok(), Some("Initial commit"));
        assert_eq!(commit.parent_count(), 0);
        let statuses = repo.statuses(None).unwrap();
        assert!(statuses.is_empty(), "working tree clean for {}", r.name);
    }
    let service = results.iter().find(|r| r.name == "service").unwrap();
    let repo = git2::Repository::open(&service.path).unwrap();
    let tree = repo.head().unwrap().peel_to_tree().unwrap();
    let blob = tree
        .get_path(std::path::Path::new("src/main.py"))
        .unwrap()
        .to_object(&repo)
        .unwrap();
    assert_eq!(blob.as_blob().unwrap().content(), b"print('hi')\n");
    assert_eq!(
        std::fs::read_to_string(service.path.join("README.md")).unwrap(),
        "# service\n"
    );
    assert!(service.path.starts_with(t.rt.volume_dir("repos")));
    let claim =
        t.rt.volumes()
            .read("repos", "repos/service")
            .await
            .unwrap()
            .unwrap();
    assert_eq!(claim.value["status"], "created");
    t.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reruns_are_idempotent_and_conflicts_refused() {
    let t = support::start(1).await;
    let agents = t.rt.agents();
    let a = agents
        .spawn_repo_creator("a", creator_config())
        .await
        .unwrap();
    let b = agents
        .spawn_repo_creator("b", creator_config())
        .await
        .unwrap();
    let cfg = config("app", &[("app.py", "x = 1\n")]);
    let first = a.create(cfg.clone()).await.unwrap().unwrap();
    assert!(first.created);
    let again = b.create(cfg.clone()).await.unwrap().unwrap();
    assert!(!again.created);
    assert_eq!(
        (again.commit.as_str(), again.created_by.as_str()),
        (first.commit.as_str(), "a")
    );
    let changed = config("app", &[("app.py", "x = 2\n")]);
    let err = b.create(changed).await.unwrap().unwrap_err();
    assert!(matches!(err, RepoError::Conflict { .. }), "{err}");
    assert!(err.to_string().contains(&first.commit));
    t.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_names_and_paths_are_refused() {
    let t = support::start(1).await;
    let agents = t.rt.agents();
    let a = agents
        .spawn_repo_creator("a", creator_config())
        .await
        .unwrap();
    for name in ["", "../up", "a/b", ".hidden", "-x", &"n".repeat(101)] {
        let err = a.create(config(name, &[])).await.unwrap().unwrap_err();
        assert!(matches!(err, RepoError::Name { .. }), "{name}: {err}");
    }
    for path in [
        "../escape.txt",
        "/etc/passwd",
        ".git/config",
        "a//b",
        "sub/.GIT/hooks/x",
    ] {
        let err = a
            .create(config("ok", &[(path, "x")]))
            .await
            .unwrap()
            .unwrap_err();
        assert!(matches!(err, RepoError::Path { .. }), "{path}: {err}");
        assert!(err.to_string().contains(path));
    }
    let mut cfg = config("ok", &[("f", "x")]);
    cfg.branch = Some("bad..branch".into());
    assert!(a.create(cfg).await.unwrap().is_err());
    assert!(
        !t.rt.volume_dir("repos").join("ok").exists(),
        "nothing written for refused configs"
    );
    let none = agents.create_repos(vec![config("x", &[])], &[]).await;
    assert!(matches!(
        none[0],
        Err(AgentError::NoAgents {
            kind: modal_agents::agents::AgentKind::RepoCreator,
            ..
        })
    ));
    t.rt.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_claim_is_taken_over() {
    let t = support::start(1).await;
    t.rt.volumes()
        .write(
            "repos",
            "repos/orphan",
            json!({"status": "creating", "owner": "ghost", "hash": "x"}),
        )
        .await
        .unwrap();
    let cfg = RepoCreatorConfig {
        stale_claim: Duration::from_millis(300),
        ..creator_config()
    };
    let a = t.rt.agents().spawn_repo_creator("a", cfg).await.unwrap();
    let mut files = BTreeMap::new();
    files.insert("f.txt".to_string(), "data".to_string());
    let r = a
        .create(RepoConfig {
            name: "orphan".into(),
            files,
            branch: Some("trunk".into()),
            message: Some("start".into()),
            description: None,
        })
        .await
        .unwrap()
        .unwrap();
    assert!(r.created && r.created_by == "a" && r.branch == "trunk");
    let repo = git2::Repository::open(&r.path).unwrap();
    assert_eq!(repo.head().unwrap().shorthand().ok(), Some("trunk"));
    t.rt.shutdown().await;
}
