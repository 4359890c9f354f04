//! A [`CodeGenerator`] backed by a model behind any OpenAI-compatible
//! chat-completions endpoint (OpenAI, a vLLM or llama.cpp server, a
//! gateway). The model is asked for the whole module as a JSON object; a
//! component that fails the agent's checks comes back to the model with the
//! error, at most [`ChatConfig::max_revisions`] times.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};

use super::{CodeGenerator, CodegenError, CodegenTask, GeneratedCode, Language};
use crate::runtime::Runtime;
use crate::secrets::SecretStore;

/// Settings of a [`ChatGenerator`].
#[derive(Debug, Clone)]
pub struct ChatConfig {
    /// The API's base URL, up to the version (`https://api.openai.com/v1`,
    /// `http://127.0.0.1:8000/v1`); requests go to `{base_url}/chat/completions`.
    pub base_url: String,
    /// The model's name.
    pub model: String,
    /// The runtime secret holding the API key (default: none, no
    /// `Authorization` header), and the key in it (default `OPENAI_API_KEY`).
    pub api_key_secret: Option<String>,
    /// The key of the API key within that secret.
    pub api_key_name: String,
    /// Times a rejected component goes back to the model with its error
    /// (default 2).
    pub max_revisions: u32,
    /// Bound on one request (default 120 s).
    pub timeout: Duration,
    /// Sampling temperature (default 0.2).
    pub temperature: f64,
}

impl ChatConfig {
    /// Settings for `model` at `base_url`, with the defaults above.
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> ChatConfig {
        ChatConfig {
            base_url: base_url.into(),
            model: model.into(),
            api_key_secret: None,
            api_key_name: "OPENAI_API_KEY".into(),
            max_revisions: 2,
            timeout: Duration::from_secs(120),
            temperature: 0.2,
        }
    }
}

/// A code generator that asks a chat-completions model.
#[derive(Debug, Clone)]
pub struct ChatGenerator {
    config: ChatConfig,
    secrets: SecretStore,
    http: reqwest::Client,
}

const SYSTEM: &str = "You write one source module for a component of a package. Answer with \
only a JSON object: {\"module\": file stem (an identifier), \"source\": the whole module, \
\"exports\": names the module defines for others}. No prose, no code fences.";

impl ChatGenerator {
    /// A generator over `config`, reading its API key from `runtime`'s
    /// secrets at each request (so a rotated key is used at once).
    pub fn new(runtime: &Runtime, config: ChatConfig) -> Result<ChatGenerator, CodegenError> {
        let url = reqwest::Url::parse(&config.base_url)
            .map_err(|e| CodegenError::Spec(format!("base_url {:?}: {e}", config.base_url)))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(CodegenError::Spec(format!(
                "base_url {:?}: expected an http(s) URL",
                config.base_url
            )));
        }
        if config.model.trim().is_empty() {
            return Err(CodegenError::Spec("model: expected a model name".into()));
        }
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .build()
            .map_err(|e| CodegenError::Generator(e.to_string()))?;
        Ok(ChatGenerator {
            config,
            secrets: runtime.secrets().clone(),
            http,
        })
    }

    fn brief(task: &CodegenTask) -> String {
        let check = match task.language {
            Language::Python => {
                "It is imported in a fresh interpreter: it must import cleanly \
                                 and define every name in exports."
            }
            Language::Rust => "It must parse as a Rust source file.",
        };
        format!(
            "Write the {:?} module for this component. {check}\n{}",
            task.language,
            json!({"component": task.component, "type": task.kind, "spec": task.spec})
        )
    }

    async fn ask(&self, messages: Vec<Value>) -> Result<GeneratedCode, CodegenError> {
        let mut request = self
            .http
            .post(format!(
                "{}/chat/completions",
                self.config.base_url.trim_end_matches('/')
            ))
            .json(&json!({
                "model": self.config.model,
                "temperature": self.config.temperature,
                "response_format": {"type": "json_object"},
                "messages": messages,
            }));
        if let Some(secret) = &self.config.api_key_secret {
            let env = self
                .secrets
                .resolve(std::slice::from_ref(secret))
                .map_err(|e| CodegenError::Generator(e.to_string()))?;
            let key = env.get(&self.config.api_key_name).ok_or_else(|| {
                CodegenError::Generator(format!(
                    "secret `{secret}` has no key `{}`",
                    self.config.api_key_name
                ))
            })?;
            request = request.bearer_auth(key);
        }
        // The error never carries the request (and so never the key).
        let failed = |what: &str| CodegenError::Generator(format!("the model API {what}"));
        let response = request
            .send()
            .await
            .map_err(|e| failed(&format!("could not be reached: {}", e.without_url())))?;
        let status = response.status();
        if !status.is_success() {
            return Err(failed(&format!("answered {status}")));
        }
        let answer: Value = response
            .json()
            .await
            .map_err(|_| failed("answered something other than JSON"))?;
        let content = answer["choices"][0]["message"]["content"]
            .as_str()
            .ok_or_else(|| failed("answered no message content"))?;
        let trimmed = content
            .trim()
            .trim_start_matches("```json")
            .trim_start_matches("```")
            .trim_end_matches("```")
            .trim();
        serde_json::from_str::<GeneratedCode>(trimmed).map_err(|e| {
            CodegenError::Generator(format!(
                "the model's answer is not a {{module, source, exports}} object: {e}"
            ))
        })
    }
}

#[async_trait]
impl CodeGenerator for ChatGenerator {
    async fn generate(&self, task: &CodegenTask) -> Result<GeneratedCode, CodegenError> {
        self.ask(vec![
            json!({"role": "system", "content": SYSTEM}),
            json!({"role": "user", "content": Self::brief(task)}),
        ])
        .await
    }

    fn max_revisions(&self) -> u32 {
        self.config.max_revisions
    }

    async fn revise(
        &self,
        task: &CodegenTask,
        previous: &GeneratedCode,
        error: &str,
    ) -> Result<GeneratedCode, CodegenError> {
        self.ask(vec![
            json!({"role": "system", "content": SYSTEM}),
            json!({"role": "user", "content": Self::brief(task)}),
            json!({"role": "assistant", "content": json!(previous).to_string()}),
            json!({"role": "user", "content": format!(
                "The module was rejected: {error}\nFix it and answer with the whole module \
                 again, as the same JSON object."
            )}),
        ])
        .await
    }
}
