//! Issue 26, items 3 and 4, played by rogue nodes: for a catalogued model
//! the coordinator counts the prompt itself and the output from the ids
//! the node streams; a receipt that claims other counts is rejected as the
//! node's, ids that do not make the text fail the job, and padding or
//! splitting tokens bills nothing more.
//!
//! The model is the catalog fixture's tiny llama: a word-level tokenizer
//! (`hello` = 1, `world` = 2, `</s>` = 4, special) whose decoder joins
//! words with a space.

use super::*;
use crate::core::catalog::Naming;
use crate::core::catalog::entry_from_path;
use crate::core::catalog::tests::hf_folder;

const COUNTED: &str = "test/tiny";
const HELLO: u32 = 1;
const WORLD: u32 = 2;
const END: u32 = 4;

/// Scripted nodes serving [`COUNTED`], which the catalog knows.
fn setup_counted(scripts: Vec<Script>) -> Setup {
    let s = setup_adverts(scripts, &|_, ad| {
        ad.models[0].id = COUNTED.into();
        ad.models[0].weights_sha256 = None;
    });
    let dir = s._dir.path().join("tiny");
    let naming = Naming {
        id: COUNTED.into(),
        license: "Apache-2.0".into(),
        aliases: Vec::new(),
        kind: String::new(),
    };
    let (entry, tokenizer) = entry_from_path(&hf_folder(&dir, 1), naming).unwrap();
    s.core
        .catalog
        .add(entry, Some(tokenizer.as_bytes()))
        .unwrap();
    s
}

fn counted_job(content: &str) -> Arc<Job> {
    let mut j = (*job(&[])).clone();
    j.models = vec![COUNTED.into()];
    j.input = JobInput::Chat {
        messages: vec![ChatMessage::new("user", content)],
    };
    Arc::new(j)
}

/// The prompt tokens the coordinator counts for [`counted_job`].
fn input_count(s: &Setup, content: &str) -> u32 {
    let prompt = s.core.catalog.prompt_model(COUNTED).unwrap();
    let job = counted_job(content);
    prompt.count_prompt(&job.input, None).unwrap()
}

async fn run(s: &Setup, content: &str) -> Result<Box<Finished>, Error> {
    let mut active = start_job(&s.core, counted_job(content), &s.principal, None).await?;
    active.run_to_end(&s.core).await
}

fn serve(input: u32, output: u32, deltas: Vec<(&'static str, Vec<u32>)>) -> Script {
    Script::Counted {
        deltas,
        tokens: None,
        input,
        output,
    }
}

#[tokio::test]
async fn an_honest_node_is_billed_the_coordinators_own_counts() {
    let probe = setup_counted(vec![]);
    let n = input_count(&probe, "hello");
    // "hello world" and the end token: 2 words (the end is not billed).
    let s = setup_counted(vec![serve(
        n,
        2,
        vec![
            ("hello", vec![HELLO]),
            (" world", vec![WORLD]),
            ("", vec![END]),
        ],
    )]);
    let f = run(&s, "hello").await.unwrap();
    assert_eq!(f.text, "hello world");
    assert_eq!((f.usage.input_tokens, f.usage.output_tokens), (n, 2));
    assert_eq!(f.receipt.receipt().output_tokens, 2);
    assert_eq!(s.entries(), 1);
}

#[tokio::test]
async fn padding_with_end_tokens_bills_nothing_more_and_claiming_it_is_refused() {
    let probe = setup_counted(vec![]);
    let n = input_count(&probe, "hello");
    let padded = || {
        vec![
            ("hello", vec![HELLO]),
            (" world", vec![WORLD, END, END, END, END, END]),
        ]
    };
    // Before: the node's count was the bill (7 tokens for 2 words).
    let greedy = setup_counted(vec![serve(n, 7, padded())]);
    let r = run(&greedy, "hello").await;
    assert_node_failed(&greedy, r, "output tokens but the coordinator counted 2");
    // Signing the coordinator's count is accepted: the padding gains nothing.
    let s = setup_counted(vec![serve(n, 2, padded())]);
    let f = run(&s, "hello").await.unwrap();
    assert_eq!(f.usage.output_tokens, 2);
}

#[tokio::test]
async fn a_receipt_with_another_input_count_is_refused() {
    let probe = setup_counted(vec![]);
    let n = input_count(&probe, "hello");
    let s = setup_counted(vec![serve(
        n + 10,
        2,
        vec![("hello", vec![HELLO]), (" world", vec![WORLD])],
    )]);
    let r = run(&s, "hello").await;
    assert_node_failed(
        &s,
        r,
        &format!("input tokens but the coordinator counted {n}"),
    );
}

#[tokio::test]
async fn ids_that_do_not_make_the_text_fail_the_job() {
    let probe = setup_counted(vec![]);
    let n = input_count(&probe, "hello");
    // The text says "there", the ids say "world".
    let s = setup_counted(vec![serve(
        n,
        2,
        vec![("hello", vec![HELLO]), (" there", vec![WORLD])],
    )]);
    let r = run(&s, "hello").await;
    assert_node_failed(&s, r, "do not match its text");
    // Text with no ids at all: tokens without ids.
    let s = setup_counted(vec![Script::Counted {
        deltas: vec![("hello world", vec![])],
        tokens: Some(2),
        input: n,
        output: 2,
    }]);
    let r = run(&s, "hello").await;
    assert_node_failed(&s, r, "counted 2 tokens but sent 0 ids");
    // More tokens than ids (the old upstream padding).
    let s = setup_counted(vec![Script::Counted {
        deltas: vec![("hello world", vec![HELLO, WORLD])],
        tokens: Some(6),
        input: n,
        output: 6,
    }]);
    let r = run(&s, "hello").await;
    assert_node_failed(&s, r, "counted 6 tokens but sent 2 ids");
    // Ids for text the builder never received.
    let s = setup_counted(vec![serve(n, 2, vec![("hello", vec![HELLO, WORLD])])]);
    let r = run(&s, "hello").await;
    assert_node_failed(&s, r, "do not match its text");
}

#[tokio::test]
async fn a_prompt_over_the_models_context_is_the_builders_400_before_any_node() {
    // The fixture's context is 256 tokens; each "hello" is one.
    let s = setup_counted(vec![serve(0, 0, vec![("hello", vec![HELLO])])]);
    let long = vec!["hello"; 300].join(" ");
    let err = run(&s, &long).await.err().expect("refused");
    assert!(
        matches!(&err, Error::ContextLength { message, param: "messages" } if message.contains("256")),
        "{err:?}"
    );
    assert_eq!(s.opens.load(std::sync::atomic::Ordering::SeqCst), 0);
}
