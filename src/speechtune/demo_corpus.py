"""The demo's domain: sentences full of terms the bundled models get wrong, and a general-speech guard set.

Held-out sentences are new (term, term, template) combinations, never a training sentence read by another
voice, so a falling error rate means the model learnt the terms, not the sentences.
"""
from __future__ import annotations

import itertools
import random

EN_DRUGS = ["metoprolol", "lisinopril", "atorvastatin", "amoxicillin", "omeprazole", "levothyroxine",
            "gabapentin", "warfarin", "clopidogrel", "dexamethasone", "ondansetron", "furosemide",
            "methotrexate", "amlodipine", "metformin", "prednisone"]
EN_CONDITIONS = ["tachycardia", "hyperkalemia", "bradycardia", "pneumothorax", "cholecystitis",
                 "hypothyroidism", "pancreatitis", "atrial fibrillation", "pulmonary edema", "hypoglycemia"]
EN_TEMPLATES = ["the patient was given {d} for {c}", "start {d} and check for {c}",
                "{d} was stopped because of {c}", "we added {d} after the {c} got worse",
                "continue {d} and watch for {c}", "she takes {d} since the {c}"]
# Everyday sentences the base model already gets right: the guard that catches forgetting.
EN_GENERAL = ["please schedule the meeting for tomorrow morning", "I would like a cup of coffee please",
              "the train leaves the station at nine", "can you send me the report by friday",
              "we walked along the river after dinner", "turn left at the next traffic light",
              "my brother is visiting us next week", "the children are playing in the garden",
              "this restaurant serves very good food", "do not forget to lock the door",
              "the library opens at ten on sundays", "he bought a new bicycle last month"]

ZH_DRUGS = ["阿莫西林", "布洛芬", "二甲双胍", "奥美拉唑", "阿托伐他汀", "氯吡格雷", "地塞米松", "呋塞米",
            "美托洛尔", "左甲状腺素"]
ZH_CONDITIONS = ["心动过速", "高钾血症", "胰腺炎", "气胸", "胆囊炎", "甲状腺功能减退", "房颤", "低血糖"]
ZH_TEMPLATES = ["患者服用{d}治疗{c}", "医生建议停用{d}因为{c}加重", "开始使用{d}并观察{c}",
                "因为{c}给病人加了{d}", "继续服用{d}注意{c}"]
ZH_GENERAL = ["今天天气很好我们去公园散步", "请把会议安排在明天上午", "这家饭店的菜很好吃",
              "下周我弟弟要来看我们", "图书馆星期天十点开门", "别忘了出门的时候锁门",
              "火车九点从车站出发", "孩子们在花园里玩"]

VOCAB = {"en": (EN_DRUGS, EN_CONDITIONS, EN_TEMPLATES, EN_GENERAL),
         "zh": (ZH_DRUGS, ZH_CONDITIONS, ZH_TEMPLATES, ZH_GENERAL)}


def domain_splits(lang: str = "en", n_train: int = 60, n_valid: int = 8, n_test: int = 20,
                  seed: int = 0) -> dict[str, list[str]]:
    """Train / valid / test sentences with disjoint (drug, condition) pairs; every drug and condition
    occurs in training, so held-out sentences test recombination, not unseen words."""
    drugs, conditions, templates, _ = VOCAB[lang]
    rng = random.Random(seed)
    pairs = list(itertools.product(drugs, conditions))
    rng.shuffle(pairs)
    # Cover every term in training first, then fill with the remaining pairs.
    train_pairs, seen_d, seen_c = [], set(), set()
    for d, c in pairs:
        if d not in seen_d or c not in seen_c:
            train_pairs.append((d, c))
            seen_d.add(d)
            seen_c.add(c)
    rest = [p for p in pairs if p not in train_pairs]
    train_pairs += rest[:max(0, n_train - len(train_pairs))]
    rest = [p for p in pairs if p not in train_pairs]
    held = rest[:n_valid + n_test]

    def render(ps):
        return [rng.choice(templates).format(d=d, c=c) for d, c in ps]

    return {"train": render(train_pairs), "valid": render(held[:n_valid]), "test": render(held[n_valid:])}


def general_sentences(lang: str = "en") -> list[str]:
    return list(VOCAB[lang][3])
